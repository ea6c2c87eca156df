package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller"
)

// runController runs the controller until interrupted.
func runController(ctx context.Context, args []string) error {
	fs := newFlagSet("controller", "controller [flags]")
	listen := fs.String("listen", envDefault("CAUSEWAY_LISTEN", ":8443"), "address to serve the API on (CAUSEWAY_LISTEN)")
	dataDir := fs.String("data-dir", envDefault("CAUSEWAY_DATA_DIR", "/var/lib/causeway"), "directory for the SQLite database, TLS CA and bootstrap token (CAUSEWAY_DATA_DIR)")
	db := fs.String("db", envDefault("CAUSEWAY_DB", ""), "postgres:// DSN, or SQLite file path; default <data-dir>/causeway.db (CAUSEWAY_DB)")
	tlsMode := fs.String("tls", envDefault("CAUSEWAY_TLS", ""), "auto (own CA in the data dir), files (--tls-cert/--tls-key) or off; default auto, or files when a cert is given (CAUSEWAY_TLS)")
	cert := fs.String("tls-cert", envDefault("CAUSEWAY_TLS_CERT", ""), "PEM certificate chain for TLS mode files (CAUSEWAY_TLS_CERT)")
	key := fs.String("tls-key", envDefault("CAUSEWAY_TLS_KEY", ""), "PEM private key for TLS mode files (CAUSEWAY_TLS_KEY)")
	hosts := fs.String("tls-hosts", envDefault("CAUSEWAY_TLS_HOSTS", ""), "comma-separated names and IPs for the auto certificate; default localhost and the host name (CAUSEWAY_TLS_HOSTS)")
	poll := fs.Duration("poll-interval", durationEnv("CAUSEWAY_POLL_INTERVAL", 100*time.Millisecond), "how often to poll the change feed for other replicas' writes (CAUSEWAY_POLL_INTERVAL)")
	logLevel := fs.String("log-level", envDefault("CAUSEWAY_LOG_LEVEL", "info"), "debug, info, warn or error (CAUSEWAY_LOG_LEVEL)")
	mf := meteringFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	mcfg, meters, err := mf.config()
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usagef("--log-level: want debug, info, warn or error, got %q", *logLevel)
	}
	switch controller.TLSMode(*tlsMode) {
	case "", controller.TLSAuto, controller.TLSFiles, controller.TLSOff:
	default:
		return usagef("--tls: want auto, files or off, got %q", *tlsMode)
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: level}))
	var hostList []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hostList = append(hostList, h)
		}
	}
	srv, err := controller.New(ctx, controller.Options{
		Listen: *listen, DataDir: *dataDir, DB: *db,
		TLS: controller.TLSMode(*tlsMode), CertFile: *cert, KeyFile: *key, TLSHosts: hostList,
		PollInterval: *poll, Logger: log, Version: version,
		Metering: mcfg, MeteringMeters: meters, UsageDedupRetention: *mf.dedup,
	})
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

// durationEnv reads a duration from the environment, falling back to def
// (with a warning) when it does not parse.
func durationEnv(key string, def time.Duration) time.Duration {
	s := envDefault(key, "")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "causeway: ignoring %s=%q: %v\n", key, s, err)
		return def
	}
	return d
}
