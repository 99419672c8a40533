// Package calcshared is what the Go plugin and the Go host of calcplug's interop tests share:
// go-plugin's handshake for the Calculator and the gRPC plugin type.
package calcshared

import (
	"context"

	calcplugv1 "calcplug/v1"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// CookieValue is calcplug's MAGIC_COOKIE_VALUE; the tests set it when they build
// (-ldflags "-X calcshared.CookieValue=..."), so it is declared once, in calcplug's interface.
var CookieValue = "set-by-the-build"

// Handshake is the Calculator's go-plugin handshake: magic cookie CALCULATOR_PLUGIN, protocol 1.
func Handshake(protocolVersion uint) plugin.HandshakeConfig {
	return plugin.HandshakeConfig{
		ProtocolVersion:  protocolVersion,
		MagicCookieKey:   "CALCULATOR_PLUGIN",
		MagicCookieValue: CookieValue,
	}
}

// CalculatorPlugin is the Calculator as a go-plugin GRPCPlugin.
type CalculatorPlugin struct {
	plugin.Plugin
	Impl calcplugv1.CalculatorServer
}

func (p *CalculatorPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	calcplugv1.RegisterCalculatorServer(s, p.Impl)
	return nil
}

func (p *CalculatorPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return calcplugv1.NewCalculatorClient(c), nil
}
