// Command causeway is the single Causeway binary: the controller, the site
// appliance, the admin CLI, the network-namespace lab and the benchmarks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand
// name; returning flag.ErrHelp prints nothing more and exits 0, and
// returning a usageError exits 2.
type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
	hidden  bool
}

var commands = map[string]command{
	"appliance":  {summary: "run a site appliance: enrolls, follows the controller, runs the WireGuard dataplane, probes every path, meters usage, runs a PAIR member", run: runAppliance},
	"controller": {summary: "run the controller (API, enrollment, config push)", run: runController},
	"ctl":        {summary: "admin CLI for the controller API", run: runCtl},
	"lab":        {summary: "build a demo overlay in network namespaces on this machine", run: runLab},
	"meter-sink": {summary: "a small metering API receiver (CloudEvents into SQLite) for local use and tests", run: runMeterSink},
	"bench":      {summary: "benchmarks: the dataplane against stock wireguard-go, the control plane with N appliances, forwarding with a slow metering API", run: runBench},
	"version":    {summary: "print the version", run: runVersion},
}

// version is set at link time with -ldflags "-X main.version=...".
var version = "dev"

func usage() {
	fmt.Fprintf(os.Stderr, "Causeway: a WireGuard SD-WAN overlay.\n\nUsage: causeway <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'causeway <command> --help' for a command's flags.\n")
}

// usageError marks a bad command line: it exits with status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "causeway: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.run(ctx, os.Args[2:])
	stop()
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "causeway %s: %v\n", name, err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "causeway %s: %v\n", name, err)
		os.Exit(1)
	}
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints the given synopsis above the flag list on --help.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("causeway "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: causeway %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, turning a flag error into a usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}

// envDefault returns the value of the CAUSEWAY_* variable key, or def.
// Flags given on the command line override it.
func envDefault(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

// flagsFromEnv sets flags from CAUSEWAY_* variables (flag name -> variable)
// before the command line is parsed, so that the command line overrides
// them and a bad value is reported with the variable's name.
func flagsFromEnv(fs *flag.FlagSet, vars map[string]string) error {
	for name, key := range vars {
		if v, ok := os.LookupEnv(key); ok {
			if err := fs.Set(name, v); err != nil {
				return usagef("%s=%q: %v", key, v, err)
			}
		}
	}
	return nil
}

func runVersion(ctx context.Context, args []string) error {
	fmt.Println("causeway", version)
	return nil
}
