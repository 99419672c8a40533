// calc-host is a go-plugin host for calcplug's interop tests: it starts the Calculator plugin
// given on its command line with go-plugin (gRPC only), runs the commands after `--` in order
// and prints one line per command, so the test can compare the exact outcomes.
//
//	calc-host [-automtls] PLUGIN [ARG...] -- metadata init:max_value=100 add:2:3 divide:1:0 status
//
// `bench:N` times N sequential `Add(1, 2)` calls and prints their mean, median and 99th
// percentile in nanoseconds. With `-netrpc` the plugin is a net/rpc Calculator (go-plugin's
// default protocol), and `bench:N` is the only command.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	calcplugv1 "calcplug/v1"
	"calcshared"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
)

var opCodes = map[string]uint32{
	"add": 1, "subtract": 2, "multiply": 3, "divide": 4,
	"sin": 5, "cos": 6, "tan": 7, "log": 8, "pow": 9, "sqrt": 10,
}

func main() {
	args := os.Args[1:]
	autoMTLS, netRPC := false, false
	for len(args) > 0 && (args[0] == "-automtls" || args[0] == "-netrpc") {
		autoMTLS = autoMTLS || args[0] == "-automtls"
		netRPC = netRPC || args[0] == "-netrpc"
		args = args[1:]
	}
	split := -1
	for i, arg := range args {
		if arg == "--" {
			split = i
			break
		}
	}
	if split < 1 {
		fmt.Fprintln(os.Stderr, "usage: calc-host [-automtls] PLUGIN [ARG...] -- COMMAND...")
		os.Exit(2)
	}
	pluginArgs, commands := args[:split], args[split+1:]

	logger := hclog.New(&hclog.LoggerOptions{Name: "calc-host", Output: os.Stderr, Level: hclog.Debug})
	config := &plugin.ClientConfig{
		HandshakeConfig:  calcshared.Handshake(1),
		Plugins:          map[string]plugin.Plugin{"calculator": &calcshared.CalculatorPlugin{}},
		Cmd:              exec.Command(pluginArgs[0], pluginArgs[1:]...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         autoMTLS,
		Logger:           logger,
	}
	if netRPC {
		config.Plugins = map[string]plugin.Plugin{"calculator": calcshared.NetRPCPlugin{}}
		config.AllowedProtocols = []plugin.Protocol{plugin.ProtocolNetRPC}
	}
	client := plugin.NewClient(config)
	defer client.Kill()

	rpcClient, err := client.Client()
	if err != nil {
		fmt.Printf("start -> error %v\n", err)
		os.Exit(1)
	}
	raw, err := rpcClient.Dispense("calculator")
	if err != nil {
		fmt.Printf("dispense -> error %v\n", err)
		os.Exit(1)
	}
	if netRPC {
		calc := raw.(*calcshared.RPCCalculator)
		for _, command := range commands {
			fmt.Println(command + " -> " + bench(command, func() error { _, err := calc.Add(1, 2); return err }))
		}
		return
	}
	calc := raw.(calcplugv1.CalculatorClient)
	for _, command := range commands {
		if strings.HasPrefix(command, "bench:") {
			operands := &calcplugv1.Operands{A: 1, B: 2}
			fmt.Println(command + " -> " + bench(command, func() error {
				_, err := calc.Add(context.Background(), operands)
				return err
			}))
			continue
		}
		fmt.Println(command + " -> " + run(calc, rpcClient, command))
	}
}

// bench runs `bench:N`: N sequential calls of add, each timed.
func bench(command string, add func() error) string {
	n, err := strconv.Atoi(strings.TrimPrefix(command, "bench:"))
	if err != nil || n < 1 {
		return "error: bench:N needs a positive N"
	}
	for i := 0; i < n/10+1; i++ { // warm up
		if err := add(); err != nil {
			return "rpc error " + err.Error()
		}
	}
	times := make([]int64, n)
	start := time.Now()
	for i := range times {
		t := time.Now()
		if err := add(); err != nil {
			return "rpc error " + err.Error()
		}
		times[i] = int64(time.Since(t))
	}
	mean := int64(time.Since(start)) / int64(n)
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return fmt.Sprintf("mean_ns=%d p50_ns=%d p99_ns=%d", mean, times[n/2], times[n*99/100])
}

func run(calc calcplugv1.CalculatorClient, rpcClient plugin.ClientProtocol, command string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	parts := strings.Split(command, ":")
	switch parts[0] {
	case "ping":
		if err := rpcClient.Ping(); err != nil {
			return "error " + err.Error()
		}
		return "ok"
	case "metadata":
		m, err := calc.GetMetadata(ctx, &calcplugv1.Empty{})
		if err != nil {
			return "rpc error " + err.Error()
		}
		return fmt.Sprintf("name=%s version=%s interface=%s operations=%s", m.Name, m.Version,
			m.InterfaceVersion, strings.Join(m.Operations, ","))
	case "init":
		config := map[string]string{}
		if len(parts) > 1 && parts[1] != "" {
			for _, pair := range strings.Split(parts[1], ",") {
				kv := strings.SplitN(pair, "=", 2)
				config[kv[0]] = kv[1]
			}
		}
		out, err := calc.Initialize(ctx, &calcplugv1.InitializeRequest{Config: config})
		return outcome(out.GetError(), err)
	case "shutdown":
		out, err := calc.Shutdown(ctx, &calcplugv1.Empty{})
		return outcome(out.GetError(), err)
	case "status":
		s, err := calc.GetStatus(ctx, &calcplugv1.Empty{})
		if err != nil {
			return "rpc error " + err.Error()
		}
		return fmt.Sprintf("state=%s requests=%d", s.State, s.RequestCount)
	case "angle":
		unit := calcplugv1.AngleUnit_ANGLE_UNIT_RADIANS
		if parts[1] == "degrees" {
			unit = calcplugv1.AngleUnit_ANGLE_UNIT_DEGREES
		}
		out, err := calc.SetAngleUnit(ctx, &calcplugv1.AngleUnitMessage{Unit: unit})
		return outcome(out.GetError(), err)
	case "batch":
		request := &calcplugv1.BatchRequest{}
		for _, item := range strings.Split(parts[1], ";") {
			f := strings.Split(item, ",")
			request.Items = append(request.Items, &calcplugv1.BatchItem{
				Op: opCodes[f[0]], A: number(f[1]), B: number(f[2])})
		}
		answer, err := calc.ProcessBatch(ctx, request)
		if err != nil {
			return "rpc error " + err.Error()
		}
		var out []string
		for _, r := range answer.Results {
			if r.Code != calcplugv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
				out = append(out, r.Code.String())
			} else {
				out = append(out, format(r.Value))
			}
		}
		return strings.Join(out, " ")
	}
	operands := &calcplugv1.Operands{A: number(parts[1])}
	if len(parts) > 2 {
		operands.B = number(parts[2])
	}
	var result *calcplugv1.Result
	var err error
	switch parts[0] {
	case "add":
		result, err = calc.Add(ctx, operands)
	case "subtract":
		result, err = calc.Subtract(ctx, operands)
	case "multiply":
		result, err = calc.Multiply(ctx, operands)
	case "divide":
		result, err = calc.Divide(ctx, operands)
	case "sin":
		result, err = calc.Sin(ctx, operands)
	case "cos":
		result, err = calc.Cos(ctx, operands)
	case "tan":
		result, err = calc.Tan(ctx, operands)
	case "log":
		result, err = calc.Log(ctx, operands)
	case "pow":
		result, err = calc.Pow(ctx, operands)
	case "sqrt":
		result, err = calc.Sqrt(ctx, operands)
	default:
		return "unknown command"
	}
	if err != nil {
		return "rpc error " + err.Error()
	}
	if e := result.GetError(); e.GetCode() != calcplugv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return fmt.Sprintf("error %s: %s", e.Code, e.Message)
	}
	return format(result.Value)
}

func outcome(e *calcplugv1.Error, err error) string {
	if err != nil {
		return "rpc error " + err.Error()
	}
	if e.GetCode() != calcplugv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return fmt.Sprintf("error %s: %s", e.Code, e.Message)
	}
	return "ok"
}

func number(text string) float64 {
	v, err := strconv.ParseFloat(text, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "not a number: %q\n", text)
		os.Exit(2)
	}
	return v
}

func format(v float64) string {
	return strconv.FormatFloat(v, 'g', -1, 64)
}
