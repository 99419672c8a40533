// Package calcshared is what the Go plugin and the Go host of calcplug's interop tests share:
// go-plugin's handshake for the Calculator and the gRPC plugin type.
package calcshared

import (
	"context"
	"net/rpc"

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

// Operands are the arguments of a net/rpc call, as the tutorial's net/rpc Calculator has them.
type Operands struct{ A, B float64 }

// RPCCalculator is the client side of the net/rpc Calculator (go-plugin's default protocol),
// kept for the benchmarks' peer row: go-plugin's own net/rpc Add.
type RPCCalculator struct{ Client *rpc.Client }

func (c *RPCCalculator) Add(a, b float64) (float64, error) {
	var sum float64
	err := c.Client.Call("Plugin.Add", &Operands{A: a, B: b}, &sum)
	return sum, err
}

// RPCServer is the server side: it answers Add with the sum.
type RPCServer struct{}

func (RPCServer) Add(args *Operands, reply *float64) error {
	*reply = args.A + args.B
	return nil
}

// NetRPCPlugin is the Calculator as a go-plugin net/rpc plugin.
type NetRPCPlugin struct{}

func (NetRPCPlugin) Server(*plugin.MuxBroker) (interface{}, error) { return RPCServer{}, nil }
func (NetRPCPlugin) Client(b *plugin.MuxBroker, c *rpc.Client) (interface{}, error) {
	return &RPCCalculator{Client: c}, nil
}
