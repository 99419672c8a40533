// calc-plugin is a Calculator plugin written in Go with go-plugin, for calcplug's interop
// tests: the four operations and the scientific extension, the tutorial's lifecycle, and
// hclog JSON logs on stderr. Its one optional argument, `-mode=MODE`, changes it: `netrpc`
// serves the Calculator's `Add` over go-plugin's net/rpc protocol (which calcplug refuses; the
// benchmarks time it as go-plugin's own default), `app2` speaks application protocol 2,
// `other-cookie` expects another application's magic cookie, `garbled` prints a line that is
// not a handshake, `stderr-only` exits at once after logging why.
package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	calcplugv1 "calcplug/v1"
	"calcshared"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/peer"
)

type calculator struct {
	logger   hclog.Logger
	mu       sync.Mutex
	state    calcplugv1.PluginState
	started  time.Time
	maxValue float64
	degrees  bool
	requests uint64
}

func fail(code calcplugv1.ErrorCode, format string, args ...interface{}) *calcplugv1.Error {
	return &calcplugv1.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (c *calculator) enter() *calcplugv1.Error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != calcplugv1.PluginState_PLUGIN_STATE_READY {
		return fail(calcplugv1.ErrorCode_ERROR_CODE_NOT_INITIALIZED, "the Go plugin is not initialized")
	}
	atomic.AddUint64(&c.requests, 1)
	return nil
}

func (c *calculator) compute(f func() (float64, *calcplugv1.Error), operands ...float64) (*calcplugv1.Result, error) {
	if e := c.enter(); e != nil {
		return &calcplugv1.Result{Error: e}, nil
	}
	for _, x := range operands {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return &calcplugv1.Result{Error: fail(calcplugv1.ErrorCode_ERROR_CODE_INVALID_INPUT, "operand %v is not finite", x)}, nil
		}
		if c.maxValue > 0 && math.Abs(x) > c.maxValue {
			return &calcplugv1.Result{Error: fail(calcplugv1.ErrorCode_ERROR_CODE_OUT_OF_RANGE, "operand %v is above max_value %v", x, c.maxValue)}, nil
		}
	}
	value, e := f()
	if e == nil && (math.IsInf(value, 0) || math.IsNaN(value)) {
		e = fail(calcplugv1.ErrorCode_ERROR_CODE_OVERFLOW, "the result is not finite")
	}
	if e != nil {
		return &calcplugv1.Result{Error: e}, nil
	}
	return &calcplugv1.Result{Value: value}, nil
}

func (c *calculator) Initialize(_ context.Context, r *calcplugv1.InitializeRequest) (*calcplugv1.Outcome, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxValue = 0
	for key, value := range r.Config {
		switch key {
		case "max_value":
			v, err := strconv.ParseFloat(value, 64)
			if err != nil || v <= 0 {
				c.state = calcplugv1.PluginState_PLUGIN_STATE_ERROR
				return &calcplugv1.Outcome{Error: fail(calcplugv1.ErrorCode_ERROR_CODE_INVALID_INPUT, "max_value %q is not a positive number", value)}, nil
			}
			c.maxValue = v
		case "angle_unit":
			c.degrees = value == "degrees"
		default:
			c.state = calcplugv1.PluginState_PLUGIN_STATE_ERROR
			return &calcplugv1.Outcome{Error: fail(calcplugv1.ErrorCode_ERROR_CODE_INVALID_INPUT, "unknown config key `%s`", key)}, nil
		}
	}
	c.state = calcplugv1.PluginState_PLUGIN_STATE_READY
	c.started = time.Now()
	c.logger.Info("initialized", "keys", len(r.Config))
	return &calcplugv1.Outcome{}, nil
}

func (c *calculator) Shutdown(context.Context, *calcplugv1.Empty) (*calcplugv1.Outcome, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = calcplugv1.PluginState_PLUGIN_STATE_CLOSED
	c.logger.Warn("shut down")
	return &calcplugv1.Outcome{}, nil
}

// GetStatus's message says whether the call came over TLS, for the AutoMTLS tests.
func (c *calculator) GetStatus(ctx context.Context, _ *calcplugv1.Empty) (*calcplugv1.StatusResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	message := "go-calc over plaintext"
	if p, ok := peer.FromContext(ctx); ok && p.AuthInfo != nil && p.AuthInfo.AuthType() == "tls" {
		message = "go-calc over TLS"
	}
	s := &calcplugv1.StatusResponse{State: c.state, Message: message, RequestCount: atomic.LoadUint64(&c.requests)}
	if !c.started.IsZero() {
		s.StartedAtUnixNanos = c.started.UnixNano()
		s.UptimeNanos = uint64(time.Since(c.started).Nanoseconds())
	}
	return s, nil
}

func (c *calculator) GetMetadata(context.Context, *calcplugv1.Empty) (*calcplugv1.MetadataResponse, error) {
	return &calcplugv1.MetadataResponse{
		Name: "go-calc", Version: "1.2.0", Description: "a Calculator written in Go",
		Operations:       []string{"add", "subtract", "multiply", "divide", "sin", "cos", "tan", "log", "pow", "sqrt"},
		Config:           []*calcplugv1.ConfigKey{{Key: "max_value", Description: "largest operand accepted"}, {Key: "angle_unit", DefaultValue: "radians"}},
		InterfaceVersion: "1.1.0",
	}, nil
}

func ok(v float64) (float64, *calcplugv1.Error) { return v, nil }

func (c *calculator) Add(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(o.A + o.B) }, o.A, o.B)
}
func (c *calculator) Subtract(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(o.A - o.B) }, o.A, o.B)
}
func (c *calculator) Multiply(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(o.A * o.B) }, o.A, o.B)
}
func (c *calculator) Divide(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) {
		if o.B == 0 {
			return 0, fail(calcplugv1.ErrorCode_ERROR_CODE_DIVISION_BY_ZERO, "go-calc cannot divide %v by zero", o.A)
		}
		return ok(o.A / o.B)
	}, o.A, o.B)
}
func (c *calculator) radians(x float64) float64 {
	if c.degrees {
		return x * math.Pi / 180
	}
	return x
}
func (c *calculator) Sin(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(math.Round(math.Sin(c.radians(o.A))*1e12) / 1e12) }, o.A)
}
func (c *calculator) Cos(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(math.Round(math.Cos(c.radians(o.A))*1e12) / 1e12) }, o.A)
}
func (c *calculator) Tan(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(math.Round(math.Tan(c.radians(o.A))*1e12) / 1e12) }, o.A)
}
func (c *calculator) Log(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) {
		if o.A <= 0 || o.A == 1 || o.B <= 0 {
			return 0, fail(calcplugv1.ErrorCode_ERROR_CODE_INVALID_INPUT, "log(%v, %v) is undefined", o.A, o.B)
		}
		return ok(math.Log(o.B) / math.Log(o.A))
	}, o.A, o.B)
}
func (c *calculator) Pow(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) { return ok(math.Pow(o.A, o.B)) }, o.A, o.B)
}
func (c *calculator) Sqrt(_ context.Context, o *calcplugv1.Operands) (*calcplugv1.Result, error) {
	return c.compute(func() (float64, *calcplugv1.Error) {
		if o.A < 0 {
			return 0, fail(calcplugv1.ErrorCode_ERROR_CODE_INVALID_INPUT, "sqrt(%v) is undefined", o.A)
		}
		return ok(math.Sqrt(o.A))
	}, o.A)
}

func (c *calculator) ProcessBatch(ctx context.Context, r *calcplugv1.BatchRequest) (*calcplugv1.BatchResponse, error) {
	calls := map[uint32]func(context.Context, *calcplugv1.Operands) (*calcplugv1.Result, error){
		1: c.Add, 2: c.Subtract, 3: c.Multiply, 4: c.Divide, 5: c.Sin, 6: c.Cos, 7: c.Tan, 8: c.Log, 9: c.Pow, 10: c.Sqrt,
	}
	out := &calcplugv1.BatchResponse{}
	for _, item := range r.Items {
		call, known := calls[item.Op]
		if !known {
			out.Results = append(out.Results, &calcplugv1.BatchItemResult{Code: calcplugv1.ErrorCode_ERROR_CODE_UNSUPPORTED})
			continue
		}
		result, _ := call(ctx, &calcplugv1.Operands{A: item.A, B: item.B})
		out.Results = append(out.Results, &calcplugv1.BatchItemResult{Value: result.Value, Code: result.GetError().GetCode()})
	}
	return out, nil
}

func (c *calculator) SetAngleUnit(_ context.Context, r *calcplugv1.AngleUnitMessage) (*calcplugv1.Outcome, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.degrees = r.Unit == calcplugv1.AngleUnit_ANGLE_UNIT_DEGREES
	return &calcplugv1.Outcome{}, nil
}

func (c *calculator) GetAngleUnit(context.Context, *calcplugv1.Empty) (*calcplugv1.AngleUnitMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.degrees {
		return &calcplugv1.AngleUnitMessage{Unit: calcplugv1.AngleUnit_ANGLE_UNIT_DEGREES}, nil
	}
	return &calcplugv1.AngleUnitMessage{Unit: calcplugv1.AngleUnit_ANGLE_UNIT_RADIANS}, nil
}

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr, JSONFormat: true})
	mode := ""
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "-mode=") {
		mode = strings.TrimPrefix(os.Args[1], "-mode=")
	}
	handshake := calcshared.Handshake(1)
	switch mode {
	case "garbled":
		fmt.Println("hello from a plugin that forgot its handshake")
		time.Sleep(time.Minute)
		return
	case "stderr-only":
		logger.Error("refusing to start", "reason", "asked to")
		os.Exit(3)
	case "netrpc":
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: handshake,
			Plugins:         map[string]plugin.Plugin{"calculator": calcshared.NetRPCPlugin{}},
		})
		return
	case "app2":
		handshake = calcshared.Handshake(2)
	case "other-cookie":
		handshake.MagicCookieValue = "another-application"
	}
	logger.Debug("starting", "pid", os.Getpid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: map[string]plugin.Plugin{
			"calculator": &calcshared.CalculatorPlugin{Impl: &calculator{logger: logger, state: calcplugv1.PluginState_PLUGIN_STATE_UNINITIALIZED}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
	})
}
