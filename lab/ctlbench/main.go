package ctlbench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

const usage = `Usage: causeway bench control [flags]

Measures how fast one change that touches every appliance reaches all of
them. Starts the controller (causeway controller, a child process on
127.0.0.1, TLS off, a throw-away database), enrols N appliances through the
API and runs N simulated appliances in this process: control-plane clients
only, each holding one sync long-poll and applying what arrives by decoding
and validating it. Then, --changes times, one more appliance enrols (every
appliance gets a new peer), and it reports, from the API call's start, the
p50/p90/p99/max time until each appliance applied it, the controller's CPU
seconds for the change and its peak RSS (from /proc), and the bytes pushed.
Summary figures are medians over the changes. Linux only; needs an
open-file limit above N. See docs/benchmarks-control.md.

Flags:
`

// Main runs the benchmark as `causeway bench control` with args (the flags
// after "control"), printing the result to stdout and progress to stderr.
func Main(ctx context.Context, args []string) error {
	return mainIO(ctx, args, os.Stdout, os.Stderr)
}

func mainIO(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench control", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o Options
	fs.IntVar(&o.Appliances, "appliances", DefaultAppliances, "number of simulated appliances (N)")
	fs.IntVar(&o.Sites, "sites", 0, "number of sites; a site holds at most two appliances and each change gets a site of its own (default N/2 rounded up + changes)")
	fs.StringVar(&o.DB, "db", "sqlite", "sqlite (in a temporary directory), or a postgres:// DSN; the benchmark works in a schema of its own there and drops it at the end")
	fs.IntVar(&o.Changes, "changes", DefaultChanges, "how many times to make and measure the change")
	fs.StringVar(&o.Sync, "sync", SyncDelta, "delta: appliances ask for deltas (?delta=1); full: they always get the whole netmap")
	fs.StringVar(&o.Binary, "binary", "", "causeway binary to run as the controller (default: build ./cmd/causeway of the source tree holding the working directory)")
	fs.IntVar(&o.Concurrency, "concurrency", DefaultConcurrency, "API calls in flight during setup")
	fs.DurationVar(&o.SyncWait, "sync-wait", DefaultSyncWait, "long-poll wait of each sync request")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "how long to wait for every appliance to apply one change")
	fs.StringVar(&o.LogLevel, "log-level", DefaultLogLevel, "the controller's --log-level (info logs one line per request, as deployed)")
	fs.BoolVar(&o.DecodeEnrollment, "decode-enrollment", false, "during setup, decode and validate the netmap in every enrollment answer (slow at large N; setup is not measured)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.Progress = stderr
	res, err := Run(ctx, o)
	if res != nil && len(res.Changes) > 0 {
		var perr error
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			perr = enc.Encode(res)
		} else {
			perr = res.WriteText(stdout)
		}
		err = errors.Join(err, perr)
	}
	return err
}

// WriteText prints the result as a table.
func (r *Result) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "control plane: %d appliances, %d sites, %s, sync %s, %d CPUs\n", r.Appliances, r.Sites, r.DB, r.Sync, r.CPUs)
	fmt.Fprintf(w, "setup %.1f s (controller CPU %.1f s)\n\n", r.SetupSeconds, r.SetupControllerCPUSeconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "change\tversion\tapplied\tp50 ms\tp90 ms\tp99 ms\tmax ms\tAPI ms\tctl CPU s\tbench CPU s\tbytes\tdeltas\t")
	for i, c := range r.Changes {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%d\t%d\t\n", i+1, c.Version, c.Applied,
			c.P50Millis, c.P90Millis, c.P99Millis, c.MaxMillis, c.APIMillis, c.ControllerCPUSeconds, c.BenchCPUSeconds, c.Bytes, c.Deltas)
	}
	fmt.Fprintf(tw, "median\t\t\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%d\t\t\n",
		r.P50Millis, r.P90Millis, r.P99Millis, r.MaxMillis, r.APIMillis, r.ControllerCPUSeconds, r.BenchCPUSeconds, r.Bytes)
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\ncontroller RSS %.1f MiB, peak %.1f MiB; bench peak RSS %.1f MiB; sync errors %d\n",
		mib(r.ControllerRSSBytes), mib(r.ControllerPeakRSSBytes), mib(r.BenchPeakRSSBytes), r.SyncErrors)
	return err
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
