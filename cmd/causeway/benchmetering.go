package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/causeway-net/causeway/lab"
	"github.com/causeway-net/causeway/lab/meterbench"
)

const benchMeteringSynopsis = `bench metering [flags]

Builds a lab (see 'causeway lab'; needs root) and measures whether a slow
metering API reaches the data path: the round-trip time of pings from
office-1-host to vpc-1-backend-1 through the overlay while the lab's meter
sink answers at once, and while it holds every answer for --delay (the
controller's export waits on it all along; the pings are metered, so usage
is reported and exported throughout). Normal and slow phases alternate over
--rounds rounds. It prints every phase (RTT median and 99th percentile, the
usage reports the controller answered and the slowest of them, events
exported and queued), the medians over the rounds and the ratios slow/normal,
and takes the lab down at the end, also on Ctrl-C. Needs ping
(iputils-ping). See docs/benchmarks.md.

Flags:`

func runBenchMetering(ctx context.Context, args []string) error {
	fs := newFlagSet("bench metering", benchMeteringSynopsis)
	rounds := fs.Int("rounds", meterbench.DefaultRounds, "rounds; each measures both phases, the order alternating")
	pings := fs.Int("pings", meterbench.DefaultPings, "echo requests per phase")
	interval := fs.Duration("ping-interval", meterbench.DefaultPingInterval, "time between echo requests")
	delay := fs.Duration("delay", meterbench.DefaultDelay, "how long the slow metering API holds every answer")
	bl := benchLabFlags(fs, "mbench", "log the lab's progress")
	if err := bl.parse(fs, args); err != nil {
		return err
	}
	opts := meterbench.Options{Rounds: *rounds, Pings: *pings, PingInterval: *interval, Delay: *delay, Progress: os.Stderr}
	if err := opts.Check(); err != nil {
		return usagef("%v", err)
	}
	return bl.run(ctx, bl.logger(slog.LevelInfo), func(l *lab.Lab, _ string) (textResult, error) {
		res, err := meterbench.Run(ctx, l, opts)
		if res == nil {
			return nil, err
		}
		return res, err
	})
}

// benchLab holds the flags of a benchmark that builds a lab of its own.
type benchLab struct {
	instance, stateRoot *string
	asJSON, verbose     *bool
}

// benchLabFlags defines --instance (default instance), --state-root,
// --json and --verbose.
func benchLabFlags(fs *flag.FlagSet, instance, verboseHelp string) benchLab {
	return benchLab{
		instance: fs.String("instance", instance, "lab instance name, 1-8 lower-case letters and digits"),
		stateRoot: fs.String("state-root", envDefault("CAUSEWAY_LAB_STATE_ROOT", lab.DefaultStateRoot),
			"directory holding each lab instance's state (env CAUSEWAY_LAB_STATE_ROOT)"),
		asJSON:  fs.Bool("json", false, "print the result as JSON"),
		verbose: fs.Bool("verbose", false, verboseHelp),
	}
}

// parse parses the command line, which takes no arguments.
func (b benchLab) parse(fs *flag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if !lab.ValidInstance(*b.instance) {
		return usagef("--instance %q: want 1-8 lower-case letters and digits", *b.instance)
	}
	return nil
}

// logger logs to stderr: warnings, or with --verbose from level on.
func (b benchLab) logger(verbose slog.Level) *slog.Logger {
	level := slog.LevelWarn
	if *b.verbose {
		level = verbose
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// textResult is a benchmark's result.
type textResult interface{ WriteText(io.Writer) error }

// run builds the lab with this binary, runs the benchmark on it, takes
// the lab down (also when the benchmark fails) and prints the result.
func (b benchLab) run(ctx context.Context, log *slog.Logger, bench func(l *lab.Lab, exe string) (textResult, error)) error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces)")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the causeway binary: %w", err)
	}
	fmt.Fprintf(os.Stderr, "building lab instance %q\n", *b.instance)
	l, err := lab.Up(ctx, lab.Options{Instance: *b.instance, StateRoot: *b.stateRoot, Binary: exe, OwnerPID: os.Getpid(), Logger: log})
	if err != nil {
		return err
	}
	res, err := bench(l, exe)
	if derr := l.Down(); derr != nil {
		err = errors.Join(err, fmt.Errorf("taking the lab down: %w", derr))
	}
	if res != nil {
		err = errors.Join(err, printBench(res, *b.asJSON))
	}
	return err
}
