// Package controller wires the controller together: store, state, API and
// HTTP server, as run by `causeway controller`.
//
// The layers, each in its own package:
//
//	api     thin net/http adapter (routing, auth, problem JSON, metrics)
//	state   business rules, caches, netmap compilation, change following
//	push    the hub sync long-polls wait on
//	store   SQL over SQLite or PostgreSQL, versioned migrations
//	netmap  the wire type an appliance receives (imported by the appliance)
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/causeway-net/causeway/controller/api"
	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/internal/atomicfile"
)

// OperatorTokenFile is where, in the data directory, the first start
// writes the bootstrap operator token (mode 0600).
const OperatorTokenFile = "operator.token"

// Options configures New. DataDir is required.
type Options struct {
	// Listen is the TCP address to serve on; "" means ":8443".
	Listen string
	// DataDir holds the SQLite database (by default), the TLS CA and the
	// bootstrap token. It is created 0700 if missing.
	DataDir string
	// DB is a postgres:// DSN or an SQLite path; "" means
	// DataDir/causeway.db.
	DB string
	// TLS is the TLS mode; "" means TLSAuto, or TLSFiles when CertFile is set.
	TLS      TLSMode
	CertFile string
	KeyFile  string
	// TLSHosts are the names and addresses the auto certificate is valid
	// for; empty means localhost, 127.0.0.1, ::1 and the host name.
	TLSHosts []string
	// PollInterval is how often the change feed is polled for other
	// replicas' writes; 0 means 100ms.
	PollInterval time.Duration
	// PathMaintenanceInterval is how often path history is rolled up and
	// pruned; 0 means a minute.
	PathMaintenanceInterval time.Duration
	// Metering configures the export of usage to the metering API; an
	// empty URL turns it off (nothing is queued then).
	Metering metering.Config
	// MeteringMeters are the exported meters (see metering.ParseMeters);
	// nil means metering.DefaultMeters.
	MeteringMeters map[string]string
	// UsageDedupRetention is how long counted usage records are
	// remembered (state.DefaultUsageDedupRetention if 0).
	UsageDedupRetention time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests; 0 means 10s.
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Version         string
}

// Server is a running controller.
type Server struct {
	opts     Options
	log      *slog.Logger
	store    *store.Store
	state    *state.State
	api      *api.API
	metering *metering.Worker
	http     *http.Server
	ln       net.Listener
	tls      bool
	caFinger string
}

// New opens the store, loads the state, bootstraps the first operator
// token if the store has none, and binds the listener. Call Serve to
// answer requests.
func New(ctx context.Context, opts Options) (*Server, error) {
	if opts.DataDir == "" {
		return nil, errors.New("controller: a data directory is required")
	}
	if opts.Listen == "" {
		opts.Listen = ":8443"
	}
	if opts.DB == "" {
		opts.DB = filepath.Join(opts.DataDir, "causeway.db")
	}
	if opts.TLS == "" {
		opts.TLS = TLSAuto
		if opts.CertFile != "" {
			opts.TLS = TLSFiles
		}
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controller: data directory: %w", err)
	}
	s := &Server{opts: opts, log: log}
	var tlsConf *tls.Config
	switch opts.TLS {
	case TLSOff:
	case TLSFiles:
		if opts.CertFile == "" || opts.KeyFile == "" {
			return nil, errors.New("controller: TLS mode files needs a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("controller: loading the TLS certificate: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case TLSAuto:
		hosts := opts.TLSHosts
		if len(hosts) == 0 {
			hosts = []string{"localhost", "127.0.0.1", "::1"}
			if h, err := os.Hostname(); err == nil {
				hosts = append(hosts, h)
			}
		}
		cert, finger, err := autoTLS(opts.DataDir, hosts, time.Now())
		if err != nil {
			return nil, fmt.Errorf("controller: TLS: %w", err)
		}
		s.caFinger = finger
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	default:
		return nil, fmt.Errorf("controller: unknown TLS mode %q (want auto, files or off)", opts.TLS)
	}

	st, err := store.Open(ctx, opts.DB, store.Options{})
	if err != nil {
		return nil, err
	}
	s.store = st
	// The gauge is read only once serving starts, after s.state is set.
	metrics := api.NewMetrics(func() int { return s.state.Hub().Connected() })
	var meters map[string]string
	if opts.Metering.URL != "" {
		meters = opts.MeteringMeters
		if meters == nil {
			meters = metering.DefaultMeters
		}
	}
	s.state, err = state.New(ctx, state.Options{
		Store:               st,
		Logger:              log,
		PollInterval:        opts.PollInterval,
		OnPush:              metrics.ObservePush,
		ExportMeters:        meters,
		UsageDedupRetention: opts.UsageDedupRetention,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	if opts.Metering.URL != "" {
		mc := opts.Metering
		if mc.Logger == nil {
			mc.Logger = log
		}
		if s.metering, err = metering.New(s.state, mc); err != nil {
			s.closeState()
			return nil, fmt.Errorf("controller: %w", err)
		}
		if err := metrics.Register(s.metering.Collectors()...); err != nil {
			s.closeState()
			return nil, fmt.Errorf("controller: metering metrics: %w", err)
		}
	}
	if err := s.bootstrap(ctx); err != nil {
		s.closeState()
		return nil, err
	}
	s.api = api.New(api.Options{State: s.state, Logger: log, Metrics: metrics, Version: opts.Version, Metering: s.metering})
	s.http = &http.Server{
		Handler:           s.api,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// No WriteTimeout: sync long-polls hold responses for up to
		// api.MaxSyncWait; each handler bounds its own time.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	s.ln, err = net.Listen("tcp", opts.Listen)
	if err != nil {
		s.closeState()
		return nil, fmt.Errorf("controller: %w", err)
	}
	if tlsConf != nil {
		s.tls = true
		s.ln = tls.NewListener(s.ln, tlsConf)
	}
	return s, nil
}

// bootstrap makes the first operator token and writes it to the data
// directory. The token itself is never logged.
func (s *Server) bootstrap(ctx context.Context) error {
	secret, err := s.state.Bootstrap(ctx)
	if err != nil || secret == "" {
		return err
	}
	path := filepath.Join(s.opts.DataDir, OperatorTokenFile)
	if err := atomicfile.Write(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("controller: writing the bootstrap token: %w", err)
	}
	s.log.Warn("created the first operator API token; keep it safe and delete the file once stored elsewhere", "path", path)
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the base URL of the server.
func (s *Server) URL() string {
	scheme := "http"
	if s.tls {
		scheme = "https"
	}
	return scheme + "://" + s.ln.Addr().String()
}

// CAFingerprint is the SHA-256 fingerprint of the auto TLS CA, "" in other
// modes.
func (s *Server) CAFingerprint() string { return s.caFinger }

// Serve answers requests until ctx ends, then shuts down in this order:
//
//  1. /readyz starts failing, so load balancers send no new work;
//  2. the state stops following changes and wakes every waiting sync
//     long-poll, which answers 503 so the appliance retries elsewhere
//     (without this, shutdown would wait out each long-poll);
//  3. the HTTP server stops accepting and waits, up to ShutdownTimeout,
//     for in-flight requests;
//  4. the path history upkeep and usage dedup pruning loops and the usage
//     export worker stop (an export in flight finishes recording what it
//     sent);
//  5. the store closes.
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("controller listening", "addr", s.ln.Addr().String(), "tls", s.opts.TLS, "engine", s.store.Engine(),
		"ca_sha256", s.caFinger, "version", s.opts.Version)
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	// Path history upkeep (rollups, retention) has its own context: it
	// stops after the HTTP server has drained, before the store closes.
	// So do usage pruning and the export worker.
	mctx, stopMaintenance := context.WithCancel(context.Background())
	var background sync.WaitGroup
	background.Go(func() { s.state.RunPathMaintenance(mctx, s.opts.PathMaintenanceInterval) })
	background.Go(func() { s.state.RunUsageMaintenance(mctx, 0) })
	if s.metering != nil {
		background.Go(func() {
			if err := s.metering.Run(mctx); err != nil {
				s.log.Error("usage export stopped", "err", err)
			}
		})
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("controller shutting down")
	s.api.SetDraining()
	s.state.Close()
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if err := s.http.Shutdown(sctx); err != nil {
		s.log.Warn("in-flight requests cut off", "err", err)
		s.http.Close()
	}
	stopMaintenance()
	background.Wait()
	if err := s.store.Close(); err != nil {
		s.log.Warn("closing the store", "err", err)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	s.log.Info("controller stopped")
	return nil
}

func (s *Server) closeState() {
	s.state.Close()
	s.store.Close()
}
