package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/causeway-net/causeway/appliance"
)

func runAppliance(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "pubkey" {
		return runAppliancePubkey(args[1:])
	}
	fs := newFlagSet("appliance", `appliance --config FILE [--check]
       causeway appliance pubkey --state-dir DIR

Runs the site appliance in the foreground from a JSON config file (see
docs/appliance.md). On first start it generates the WireGuard private key in
the config's state_dir (mode 0600); the key is never printed. SIGHUP reloads
the config file (peers and prefixes change in place; a bad file is logged and
the running config kept). SIGTERM or SIGINT removes everything the appliance
added and exits. Logs are JSON on stdout.

'pubkey' prints the public key of the appliance that uses DIR, creating the
key if there is none yet.

Flags:`)
	configPath := fs.String("config", envDefault("CAUSEWAY_CONFIG", ""), "config file (env CAUSEWAY_CONFIG)")
	check := fs.Bool("check", false, "validate the config file and exit")
	logLevel := fs.String("log-level", envDefault("CAUSEWAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CAUSEWAY_LOG_LEVEL)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *configPath == "" {
		return usagef("--config is required")
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	cfg, err := appliance.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *check {
		fmt.Printf("%s: ok (%d peers)\n", *configPath, len(cfg.Peers))
		return nil
	}
	log = log.With("appliance", cfg.Name)
	a, err := appliance.Start(cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "reason", "signal")
			return a.Close()
		case <-hup:
			next, err := appliance.LoadConfig(*configPath)
			if err == nil {
				err = a.Apply(next)
			}
			if err != nil {
				log.Error("reload refused; keeping the running config", "err", err)
			}
		}
	}
}

func runAppliancePubkey(args []string) error {
	fs := newFlagSet("appliance pubkey", "appliance pubkey --state-dir DIR\n\nFlags:")
	dir := fs.String("state-dir", envDefault("CAUSEWAY_STATE_DIR", ""), "the appliance's state directory (env CAUSEWAY_STATE_DIR)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("--state-dir is required")
	}
	k, err := appliance.LoadOrCreateKey(*dir)
	if err != nil {
		return err
	}
	fmt.Println(k.Public())
	return nil
}

// newLogger returns a JSON logger on stdout at the named level.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: want debug, info, warn or error, got %q", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: l})), nil
}
