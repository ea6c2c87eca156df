package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/causeway-net/causeway/controller/metering/sink"
)

// runMeterSink runs the reference metering API receiver until interrupted.
func runMeterSink(ctx context.Context, args []string) error {
	fs := newFlagSet("meter-sink", `meter-sink [flags]

A small metering API receiver for local use and tests: it accepts
CloudEvents over HTTP (structured, structured batch and binary mode) on
POST / and POST /events, stores each event once in SQLite (by id; a copy is
acknowledged and counted as a duplicate), and reports what it holds:

  GET  /totals?by=tenant,meter,hour   sums; dimensions tenant, customer, site, meter, direction, hour
  GET  /events?limit=100              the newest events, with how many copies arrived
  GET  /admin/fault                   the fault and delay in force
  POST /admin/fault                   {"mode": "500|429|malformed|garbage|lost-answer|ok",
                                       "for": "30s", "retry_after": "2", "delay": "5s"}
  GET  /healthz, GET /metrics

With --auth, every request but /healthz and /metrics must carry that
Authorization header value.

Flags:`)
	listen := fs.String("listen", envDefault("CAUSEWAY_METER_SINK_LISTEN", "127.0.0.1:9190"), "address to listen on (CAUSEWAY_METER_SINK_LISTEN)")
	db := fs.String("db", envDefault("CAUSEWAY_METER_SINK_DB", "meter-sink.db"), "SQLite file the events are kept in (CAUSEWAY_METER_SINK_DB)")
	fs.String("auth", "", "Authorization header value required of every request, e.g. \"Bearer <key>\"; prefer the variable (CAUSEWAY_METER_SINK_AUTH)")
	delay := fs.Duration("delay", durationEnv("CAUSEWAY_METER_SINK_DELAY", 0), "answer every event request this much later (test knob) (CAUSEWAY_METER_SINK_DELAY)")
	fault := fs.String("fault", envDefault("CAUSEWAY_METER_SINK_FAULT", ""), "start misbehaving: 500, 429, malformed, garbage or lost-answer (test knob) (CAUSEWAY_METER_SINK_FAULT)")
	faultFor := fs.Duration("fault-for", 0, "end the --fault after this long; 0: until changed through /admin/fault")
	retryAfter := fs.String("fault-retry-after", "1", "Retry-After of the 429 fault: seconds or an HTTP date")
	logLevel := fs.String("log-level", envDefault("CAUSEWAY_LOG_LEVEL", "info"), "debug, info, warn or error (CAUSEWAY_LOG_LEVEL)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usagef("--log-level: want debug, info, warn or error, got %q", *logLevel)
	}
	if *delay < 0 || *faultFor < 0 {
		return usagef("--delay and --fault-for: want a duration of at least 0")
	}
	f := sink.Fault{Mode: *fault, RetryAfter: *retryAfter}
	if *faultFor > 0 {
		f.Until = time.Now().Add(*faultFor)
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: level}))
	auth := secretFlag(fs, "auth", "CAUSEWAY_METER_SINK_AUTH")
	s, err := sink.Open(ctx, sink.Options{DB: *db, Auth: auth, Delay: *delay, Fault: f, Logger: log})
	if err != nil {
		return usagef("%v", err)
	}
	defer s.Close()
	return sink.Serve(ctx, *listen, s, nil)
}
