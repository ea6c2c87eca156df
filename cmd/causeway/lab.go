package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/causeway-net/causeway/controller/ctl"
	"github.com/causeway-net/causeway/lab"
)

// labCommands are the subcommands of `causeway lab`. nsexec, serve-http
// and delay-stage are left out of the help: they are what the lab itself
// runs inside its namespaces.
var labCommands = map[string]func(ctx context.Context, args []string) error{
	"up":          runLabUp,
	"status":      runLabStatus,
	"down":        runLabDown,
	"exec":        runLabExec,
	"ctl":         runLabCtl,
	"impair":      runLabImpair,
	"nsexec":      runLabNsexec,
	"serve-http":  runLabServeHTTP,
	"delay-stage": runLabDelayStage,
}

const labSynopsis = `lab [command] [flags]

Builds a demo Causeway overlay in network namespaces on this machine (needs
root): an Internet router, a controller in the cloud, an office on two
ISPs (its appliance is also its Internet gateway), a cloud VPC with a web
backend, a home network behind NAT and a web server on the Internet, each
site with its own appliance, enrolled with and following the controller. Nothing is
configured outside the namespaces, which are named cw-<instance>-<node>.
See docs/lab.md.

Without a command, builds the lab, prints what to try, and takes it down
again on Ctrl-C or SIGTERM.

Commands:
  up      build the lab and leave it running
  status  show a running lab (--json for scripts)
  down    take a lab down (--all: every lab that no live process owns)
  exec    run a command inside a node's namespace
  ctl     run a 'causeway ctl' command against the lab's controller
  impair  add loss, delay and jitter to an ISP link, or cut it

Run 'causeway lab <command> --help' for a command's flags.

Flags:`

func runLab(ctx context.Context, args []string) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		run, ok := labCommands[args[0]]
		if !ok {
			return usagef("unknown lab command %q (see 'causeway lab --help')", args[0])
		}
		return run(ctx, args[1:])
	}
	fs := newFlagSet("lab", labSynopsis)
	lf := addLabFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q: put flags after the command (see 'causeway lab --help')", fs.Arg(0))
	}
	if err := lf.check(); err != nil {
		return err
	}
	l, err := lab.Up(ctx, lab.Options{
		Instance:  lf.instance,
		StateRoot: lf.stateRoot,
		OwnerPID:  os.Getpid(),
		Logger:    labLogger(),
	})
	if err != nil {
		return err
	}
	if err := printLabUp(os.Stdout, l, lf, "Press Ctrl-C to take the lab down."); err != nil {
		l.Down()
		return err
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "taking the lab down")
	return l.Down()
}

// labFlags are the flags every lab command shares.
type labFlags struct {
	instance  string
	stateRoot string
}

func addLabFlags(fs *flag.FlagSet) *labFlags {
	lf := &labFlags{}
	fs.StringVar(&lf.instance, "instance", labEnv("CAUSEWAY_LAB_INSTANCE", lab.DefaultInstance),
		"instance name, 1-8 lower-case letters and digits (env CAUSEWAY_LAB_INSTANCE)")
	fs.StringVar(&lf.stateRoot, "state-root", labEnv("CAUSEWAY_LAB_STATE_ROOT", lab.DefaultStateRoot),
		"directory holding each instance's state (env CAUSEWAY_LAB_STATE_ROOT)")
	return lf
}

// labEnv is envDefault, with an empty variable meaning the default too.
func labEnv(key, def string) string {
	if v := envDefault(key, def); v != "" {
		return v
	}
	return def
}

// check validates the flags, as a usage error.
func (lf *labFlags) check() error {
	if !lab.ValidInstance(lf.instance) {
		return usagef("--instance %q: want 1-8 lower-case letters and digits", lf.instance)
	}
	if !strings.HasPrefix(lf.stateRoot, "/") {
		return usagef("--state-root %q: want an absolute path", lf.stateRoot)
	}
	return nil
}

// flagArgs are the flags to repeat in the commands printed for the user.
func (lf *labFlags) flagArgs() string {
	var s string
	if lf.instance != lab.DefaultInstance {
		s += " --instance " + lf.instance
	}
	if lf.stateRoot != lab.DefaultStateRoot {
		s += " --state-root " + lf.stateRoot
	}
	return s
}

// labLogger prints progress for a person at the terminal.
func labLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func printLabUp(w io.Writer, l *lab.Lab, lf *labFlags, last string) error {
	st := l.Status()
	if err := st.WriteText(w); err != nil {
		return err
	}
	f := lf.flagArgs()
	url := st.Services[0].URL
	fmt.Fprintf(w, "\nThe lab is up. Try:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, hint := range [][2]string{
		{"office-1-host -- curl -s " + url, "the office reaches the VPC backend"},
		{"home-1-host -- curl -s " + url, "so does the home, from behind NAT"},
		{"office-1-host -- curl -s -m 2 http://10.99.0.10/", "no site announces 10.99.0.0/24"},
		{"office-1-host -- curl -s " + st.Services[1].URL, "the Internet, through the pair's gateway address (NAT over wan1 and wan2)"},
		{"office-1a -- ip route", "the overlay routes, via cw0"},
		{"office-1a -- curl -s http://127.0.0.1:9180/pair", "office-1's pair as office-1a sees it: role, term, partner, last failover"},
		{"office-1a -- curl -s http://127.0.0.1:9180/metrics", "per-peer counters, causeway_gateway_*, causeway_pair_*"},
	} {
		fmt.Fprintf(tw, "  causeway lab exec%s %s\t# %s\n", f, hint[0], hint[1])
	}
	tn := st.Controller.Tenant
	for _, hint := range [][2]string{
		{"appliance list " + tn, "the enrolled appliances, as the controller sees them"},
		{"appliance netmap " + tn + " office-1a", "what the controller pushes to office-1a"},
		{"pair status " + tn + " office-1", "the pair: active member, since when, last failover and its reason"},
		{"pair drain " + tn + " office-1a", "hand office-1 over to office-1b without loss (undrain: back)"},
		{"paths " + tn + " --from office-1 --to vpc-1 --since 1h", "loss and latency per path (history every 10 s)"},
		{"-- usage --tenant " + tn + " --since 1h", "metered usage by site, meter and peer site; also in the lab's meter sink"},
	} {
		fmt.Fprintf(tw, "  causeway lab ctl%s %s\t# %s\n", f, hint[0], hint[1])
	}
	fmt.Fprintf(tw, "  causeway lab impair%s office-1a/wan1 --loss 5%% --delay 30ms\t# degrade ISP 1; --down cuts it, --clear restores\n", f)
	tw.Flush()
	_, err := fmt.Fprintf(w, "  causeway lab status%s\n%s\n", f, last)
	return err
}

func runLabUp(ctx context.Context, args []string) error {
	fs := newFlagSet("lab up", `lab up [flags]

Builds the lab and leaves it running: the appliances and the backend run
detached, with their logs in the instance's state directory. Returns once
every appliance is healthy and the hosts can reach the backend through the
overlay. Take it down with 'causeway lab down'.

Flags:`)
	lf := addLabFlags(fs)
	if err := parseLabFlags(fs, lf, args); err != nil {
		return err
	}
	l, err := lab.Up(ctx, lab.Options{Instance: lf.instance, StateRoot: lf.stateRoot, Logger: labLogger()})
	if err != nil {
		return err
	}
	return printLabUp(os.Stdout, l, lf, "Take it down with: causeway lab down"+lf.flagArgs())
}

// parseLabFlags parses a command that takes only flags.
func parseLabFlags(fs *flag.FlagSet, lf *labFlags, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return lf.check()
}

func runLabStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("lab status", `lab status [--json] [flags]

Shows a running lab: its appliances (namespace, PID, overlay address,
uplinks), hosts, services and other nodes. --json prints the same as one
JSON object whose shape docs/lab.md documents.

Flags:`)
	lf := addLabFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	if err := parseLabFlags(fs, lf, args); err != nil {
		return err
	}
	l, err := openLab(lf)
	if err != nil {
		return err
	}
	st := l.Status()
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.WriteText(os.Stdout)
}

// openLab opens the instance the flags name, explaining a missing one.
func openLab(lf *labFlags) (*lab.Lab, error) {
	l, err := lab.Open(lf.stateRoot, lf.instance)
	if errors.Is(err, os.ErrNotExist) {
		msg := fmt.Sprintf("no lab instance %q is running (start one with 'causeway lab up%s')", lf.instance, lf.flagArgs())
		if insts, _ := lab.Instances(lf.stateRoot); len(insts) > 0 {
			var names []string
			for _, i := range insts {
				names = append(names, i.Name)
			}
			msg += "; instances: " + strings.Join(names, ", ")
		}
		return nil, errors.New(msg)
	}
	return l, err
}

func runLabDown(ctx context.Context, args []string) error {
	fs := newFlagSet("lab down", `lab down [--all] [flags]

Takes a lab down: stops its appliances and services, deletes its network
namespaces (and with them every link) and its state directory. Works on a
partly built or crashed lab too, and does nothing for one that is not there.

--all takes down every instance under the state root that no live process
owns: those made by 'causeway lab up', and leftovers whose owner (a
foreground 'causeway lab' or a test run) has exited, including namespaces
that have no state and are older than a minute. Instances whose owner
still runs are left alone.

Flags:`)
	lf := addLabFlags(fs)
	all := fs.Bool("all", false, "take down every instance no live process owns (ignores --instance)")
	if err := parseLabFlags(fs, lf, args); err != nil {
		return err
	}
	log := labLogger()
	if !*all {
		return lab.Remove(lf.stateRoot, lf.instance, log)
	}
	insts, err := lab.Instances(lf.stateRoot)
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range insts {
		if i.OwnerPID == 0 {
			errs = append(errs, lab.Remove(lf.stateRoot, i.Name, log))
		}
	}
	errs = append(errs, lab.Sweep(lf.stateRoot, log))
	return errors.Join(errs...)
}

func runLabExec(ctx context.Context, args []string) error {
	fs := newFlagSet("lab exec", `lab exec [flags] NODE [--] COMMAND [ARGS...]

Runs COMMAND inside NODE's network namespace, with this terminal's stdin,
stdout and stderr; the exit status is the command's. Only the network
namespace changes: files are the same as outside. NODE is any node name
that 'causeway lab status' shows (appliances, hosts, routers, switches).

Flags:`)
	lf := addLabFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := lf.check(); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("want a node and a command: causeway lab exec NODE -- COMMAND [ARGS...]")
	}
	node, cmd := rest[0], rest[1:]
	if len(cmd) > 0 && cmd[0] == "--" {
		cmd = cmd[1:]
	}
	if len(cmd) == 0 {
		return usagef("want a command to run in %s: causeway lab exec %s -- COMMAND [ARGS...]", node, node)
	}
	l, err := openLab(lf)
	if err != nil {
		return err
	}
	ns := l.Netns(node)
	if ns == "" {
		return usagef("no node %q in the lab (nodes: %s)", node, strings.Join(l.Nodes(), ", "))
	}
	return execInNetns(ctx, ns, cmd)
}

func runLabCtl(ctx context.Context, args []string) error {
	fs := newFlagSet("lab ctl", `lab ctl [flags] [--] NOUN VERB [ARGS...]

Runs one 'causeway ctl' command against the lab's controller as the
operator, from inside the controller's namespace, trusting only its CA.
The lab's sites are in the tenant 'demo'. For example:

  causeway lab ctl appliance list demo
  causeway lab ctl appliance netmap demo office-1a
  causeway lab ctl pair status demo office-1
  causeway lab ctl -- site create demo branch-1 --kind remote --prefix 10.40.0.0/24

Put '--' before a command that has flags of its own.

Flags:`)
	lf := addLabFlags(fs)
	asJSON := fs.Bool("json", false, "print lists as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := lf.check(); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) < 2 {
		return usagef("want a ctl command, e.g. causeway lab ctl appliance list demo\n%s", ctl.Usage)
	}
	l, err := openLab(lf)
	if err != nil {
		return err
	}
	cfg, err := l.CtlConfig()
	if err != nil {
		return err
	}
	cfg.Out, cfg.JSON = os.Stdout, *asJSON
	err = ctl.Run(ctx, cfg, rest)
	if ctl.IsUsage(err) {
		return usagef("%v", err)
	}
	return err
}

func runLabImpair(ctx context.Context, args []string) error {
	fs := newFlagSet("lab impair", `lab impair NODE/IFACE [--loss P%] [--delay D] [--jitter J] [--down] [--clear] [flags]

Impairs the ISP link of NODE's interface IFACE (e.g. office-1a/wan1; every
link to the Internet router inet can be impaired), on inet's side of it, so
that the appliance sees no change of its own. Each call replaces what the
link had: flags not given are off.

  --loss P%    drops each packet inet sends into the link, towards NODE,
               with probability P percent (0-100, steps of 0.01; nftables
               numgen): a round trip loses P percent
  --delay D    holds each packet inet sends into the link, that is towards
               NODE, for D (a userspace delay stage in inet: the round trip
               grows by D; the other direction is not delayed)
  --jitter J   adds a uniform random offset in [-J, +J] to each packet's
               delay (packets swap only if their release times do)
  --down       drops every IPv4 packet in both directions; the link's
               carrier stays up
  --clear      removes everything impair added for the link

'causeway lab down' removes every impairment with the lab. See docs/lab.md.

Flags:`)
	lf := addLabFlags(fs)
	var loss lossFlag
	fs.Var(&loss, "loss", "percentage of packets towards NODE to drop, e.g. 5% (0-100)")
	delay := fs.Duration("delay", 0, "delay towards NODE, e.g. 30ms (0-10s)")
	jitter := fs.Duration("jitter", 0, "uniform jitter around the delay, e.g. 5ms (0-10s)")
	down := fs.Bool("down", false, "drop everything on the link")
	clear := fs.Bool("clear", false, "remove the link's impairment")
	// The link may come before or after the flags.
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var link string
	if fs.NArg() > 0 {
		link = fs.Arg(0)
		if err := parseFlags(fs, fs.Args()[1:]); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return usagef("unexpected argument %q", fs.Arg(0))
		}
	}
	if err := lf.check(); err != nil {
		return err
	}
	if link == "" {
		return usagef("want a link: causeway lab impair NODE/IFACE [--loss P%%] [--delay D] [--jitter J] [--down] [--clear]")
	}
	node, iface, err := lab.ParseLink(link)
	if err != nil {
		return usagef("%v", err)
	}
	im := lab.Impairment{Loss: float64(loss), Delay: *delay, Jitter: *jitter, Down: *down}
	if *clear && im != (lab.Impairment{}) {
		return usagef("--clear takes no other impairment flags")
	}
	if !*clear && im == (lab.Impairment{}) {
		return usagef("nothing to do: give --loss, --delay, --jitter, --down or --clear")
	}
	if err := im.Check(); err != nil {
		return usagef("%v", err)
	}
	l, err := openLab(lf)
	if err != nil {
		return err
	}
	if *clear {
		if err := l.Clear(node, iface); err != nil {
			return err
		}
		fmt.Printf("%s: cleared\n", link)
		return nil
	}
	if err := l.Impair(ctx, node, iface, im); err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", link, im)
	return nil
}

// lossFlag is a percentage, with or without a trailing %.
type lossFlag float64

func (f *lossFlag) String() string { return strconv.FormatFloat(float64(*f), 'g', -1, 64) + "%" }

func (f *lossFlag) Set(s string) error {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || v < 0 || v > 100 {
		return fmt.Errorf("want a percentage from 0 to 100, e.g. 5%%, got %q", s)
	}
	*f = lossFlag(v)
	return nil
}

// runLabDelayStage is the hidden `causeway lab delay-stage`: the lab runs
// it inside the Internet router's namespace for each delayed link.
func runLabDelayStage(ctx context.Context, args []string) error {
	fs := newFlagSet("lab delay-stage", `lab delay-stage --tun NAME [--delay D] [--jitter J]

Creates the TUN device NAME in this network namespace and writes back every
packet read from it after D plus a uniform offset in [-J, +J], until
SIGTERM. 'causeway lab impair' starts it inside the Internet router's
namespace and routes the link's traffic through NAME.

Flags:`)
	tun := fs.String("tun", "", "TUN device to create (required)")
	delay := fs.Duration("delay", 0, "delay")
	jitter := fs.Duration("jitter", 0, "jitter")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *tun == "" {
		return usagef("--tun is required")
	}
	return lab.RunDelayStage(ctx, lab.DelayStageOptions{TUN: *tun, Delay: *delay, Jitter: *jitter})
}

// execInNetns replaces this process with cmd inside the namespace ns.
// SIGINT and SIGTERM get their default action back first, so that a signal
// that arrives before the exec ends this process instead of being swallowed;
// one that arrived earlier has cancelled ctx.
func execInNetns(ctx context.Context, ns string, cmd []string) error {
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	if err := ctx.Err(); err != nil {
		return err
	}
	return lab.ExecInNetns(ns, cmd[0], cmd[1:])
}

// runLabNsexec is `causeway lab nsexec NETNS -- PROG [ARGS...]`: it enters
// the namespace and execs PROG. The lab runs every process inside a
// namespace through it, so it parses no flags of its own.
func runLabNsexec(ctx context.Context, args []string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(os.Stderr, `Usage: causeway lab nsexec NETNS [--] PROG [ARGS...]

Replaces itself with PROG running inside the network namespace NETNS (a name
under /run/netns or an absolute path). Used by the lab to start processes.
`)
		return flag.ErrHelp
	}
	if len(args) < 2 {
		return usagef("usage: causeway lab nsexec NETNS [--] PROG [ARGS...]")
	}
	ns, cmd := args[0], args[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	if len(cmd) == 0 {
		return usagef("usage: causeway lab nsexec NETNS [--] PROG [ARGS...]")
	}
	return execInNetns(ctx, ns, cmd)
}

func runLabServeHTTP(ctx context.Context, args []string) error {
	fs := newFlagSet("lab serve-http", `lab serve-http --listen ADDR --name NAME [--udp-echo ADDR]

Serves the lab's web page until SIGTERM: GET / names the host and the
client, GET /bytes?n=N returns N bytes, GET /healthz says ok. With
--udp-echo it also answers every UDP datagram on ADDR with the same bytes.
Logs are JSON on stdout. The lab starts it inside the backend's and
web-1's namespaces.

Flags:`)
	listen := fs.String("listen", "", "IP:port to listen on (required)")
	name := fs.String("name", "", "host name to put in the page (required)")
	echo := fs.String("udp-echo", "", "IP:port to echo UDP on (optional)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *listen == "" || *name == "" {
		return usagef("--listen and --name are required")
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil)).With("service", *name)
	if *echo == "" {
		return lab.Serve(ctx, *listen, *name, log)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		err := lab.ServeUDPEcho(ctx, *echo, log)
		cancel() // the page goes down with the echo
		errc <- err
	}()
	err := lab.Serve(ctx, *listen, *name, log)
	cancel()
	return errors.Join(err, <-errc)
}
