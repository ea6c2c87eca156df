package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/lab"
	"github.com/causeway-net/causeway/lab/bench"
	"github.com/causeway-net/causeway/lab/ctlbench"
)

const benchSynopsis = `bench <benchmark> [flags]

Benchmarks:
  dataplane  TCP throughput and added round-trip time through the overlay,
             Causeway against the stock wireguard-go daemon
  control    time until N simulated appliances have applied one change,
             with the controller's CPU seconds and peak memory
  metering   overlay round-trip time with the metering API answering at
             once and after 5 s

Run 'causeway bench <benchmark> --help' for its flags.`

func runBench(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("which benchmark? (see 'causeway bench --help')")
	}
	switch args[0] {
	case "dataplane":
		return runBenchDataplane(ctx, args[1:])
	case "metering":
		return runBenchMetering(ctx, args[1:])
	case "control":
		if err := ctlbench.Main(ctx, args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
			return err
		}
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(os.Stderr, "Usage: causeway %s\n", benchSynopsis)
		return nil
	}
	return usagef("unknown benchmark %q (see 'causeway bench --help')", args[0])
}

const benchDataplaneSynopsis = `bench dataplane [flags]

Builds a lab (see 'causeway lab'; needs root) and measures, from office-1-host
to vpc-1-backend-1, TCP throughput with iperf3 (1 stream and 4 streams,
receiver side) and the round-trip time the tunnel adds between office-1a and
vpc-1 (median ping RTT through the tunnel minus the underlay's). It measures
the Causeway appliances, then the same path with the stock wireguard-go
daemon (built from the version go.mod pins, unless --wireguard-go names one)
configured identically with wg and ip; the two alternate over several rounds.
It prints every round, the medians and the ratio Causeway/stock, and takes the
lab down at the end, also on Ctrl-C. Needs iperf3, ping (iputils-ping), wg
(wireguard-tools), ip (iproute2) and sysctl (procps). See docs/benchmarks.md.

Flags:`

func runBenchDataplane(ctx context.Context, args []string) error {
	fs := newFlagSet("bench dataplane", benchDataplaneSynopsis)
	rounds := fs.Int("rounds", bench.DefaultRounds, "rounds; each measures both dataplanes")
	duration := fs.Duration("duration", bench.DefaultDuration, "measured length of each iperf3 test (whole seconds)")
	omit := fs.Duration("omit", time.Second, "warm-up at the start of each iperf3 test, left out of the figures (whole seconds)")
	streams := fs.String("streams", "1,4", "comma-separated iperf3 parallel stream counts, one test each")
	pings := fs.Int("pings", bench.DefaultPings, "echo requests per RTT measurement")
	pingInterval := fs.Duration("ping-interval", bench.DefaultPingInterval, "time between echo requests")
	wgPath := fs.String("wireguard-go", "", "prebuilt stock wireguard-go daemon to compare with (default: build it from go.mod, which needs the source tree and the go command)")
	bl := benchLabFlags(fs, "bench", "log the lab's progress and every command the bench runs")
	if err := bl.parse(fs, args); err != nil {
		return err
	}
	counts, err := parseStreams(*streams)
	if err != nil {
		return err
	}
	opts := bench.Options{
		Rounds:       *rounds,
		Duration:     *duration,
		Omit:         *omit,
		Streams:      counts,
		Pings:        *pings,
		PingInterval: *pingInterval,
		WireGuardGo:  *wgPath,
		Progress:     os.Stderr,
	}
	if err := opts.Check(); err != nil {
		return err
	}
	opts.Logger = bl.logger(slog.LevelDebug)
	return bl.run(ctx, opts.Logger, func(l *lab.Lab, exe string) (textResult, error) {
		opts.CausewayBinary = exe
		res, err := bench.Run(ctx, l, opts)
		if res == nil {
			return nil, err
		}
		return res, err
	})
}

func printBench(res textResult, asJSON bool) error {
	if !asJSON {
		return res.WriteText(os.Stdout)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(res)
}

// parseStreams reads a list such as "1,4".
func parseStreams(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, usagef("--streams: want positive integers separated by commas, got %q", s)
		}
		out = append(out, n)
	}
	return out, nil
}
