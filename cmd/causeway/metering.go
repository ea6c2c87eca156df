package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/state"
)

// controllerMetering holds the usage export flags of `causeway controller`.
type controllerMetering struct {
	fs                  *flag.FlagSet
	url, auth, meters   *string
	batch, attempts     *int
	timeout, backoffMax *time.Duration
	dedup               *time.Duration
}

func meteringFlags(fs *flag.FlagSet) *controllerMetering {
	return &controllerMetering{fs: fs,
		url: fs.String("metering-url", envDefault("CAUSEWAY_METERING_URL", ""),
			"metering API endpoint the usage export POSTs CloudEvents batches to; empty: no export (CAUSEWAY_METERING_URL)"),
		// The variable is read after parsing, so that --help never shows
		// the secret as the default.
		auth: fs.String("metering-auth", "",
			"Authorization header value for the metering API, e.g. \"Bearer <key>\"; prefer the variable, which stays off the command line (CAUSEWAY_METERING_AUTH)"),
		meters: fs.String("metering-meters", envDefault("CAUSEWAY_METERING_METERS", metering.FormatMeters(metering.DefaultMeters)),
			"exported meters and their names, METER.DIRECTION=NAME,... (overlay|gateway, tx|rx), or none (CAUSEWAY_METERING_METERS)"),
		batch: fs.Int("metering-batch", intEnv("CAUSEWAY_METERING_BATCH", metering.DefaultBatchSize),
			"events per request to the metering API (CAUSEWAY_METERING_BATCH)"),
		attempts: fs.Int("metering-max-attempts", intEnv("CAUSEWAY_METERING_MAX_ATTEMPTS", metering.DefaultMaxAttempts),
			"failed sends after which an event becomes a dead letter; 429 answers do not count (CAUSEWAY_METERING_MAX_ATTEMPTS)"),
		timeout: fs.Duration("metering-timeout", durationEnv("CAUSEWAY_METERING_TIMEOUT", metering.DefaultTimeout),
			"time limit of one request to the metering API (CAUSEWAY_METERING_TIMEOUT)"),
		backoffMax: fs.Duration("metering-backoff-max", durationEnv("CAUSEWAY_METERING_BACKOFF_MAX", metering.DefaultBackoffMax),
			"longest wait between retries (exponential from 1s, equal jitter) (CAUSEWAY_METERING_BACKOFF_MAX)"),
		dedup: fs.Duration("usage-dedup-retention", durationEnv("CAUSEWAY_USAGE_DEDUP_RETENTION", state.DefaultUsageDedupRetention),
			"how long counted usage records are remembered; older records are acknowledged, not counted (CAUSEWAY_USAGE_DEDUP_RETENTION)"),
	}
}

// config checks the flags; an empty URL gives a Config with no URL.
func (m *controllerMetering) config() (metering.Config, map[string]string, error) {
	*m.auth = secretFlag(m.fs, "metering-auth", "CAUSEWAY_METERING_AUTH")
	meters, err := metering.ParseMeters(*m.meters)
	if err != nil {
		return metering.Config{}, nil, usagef("--metering-meters: %v", err)
	}
	switch {
	case *m.batch < 1 || *m.batch > metering.MaxBatchSize:
		return metering.Config{}, nil, usagef("--metering-batch: want 1 to %d, got %d", metering.MaxBatchSize, *m.batch)
	case *m.attempts < 1:
		return metering.Config{}, nil, usagef("--metering-max-attempts: want at least 1, got %d", *m.attempts)
	case *m.timeout <= 0:
		return metering.Config{}, nil, usagef("--metering-timeout: want a positive duration, got %s", *m.timeout)
	case *m.backoffMax < metering.DefaultBackoffBase:
		return metering.Config{}, nil, usagef("--metering-backoff-max: want at least %s, got %s", metering.DefaultBackoffBase, *m.backoffMax)
	case *m.dedup < time.Hour:
		return metering.Config{}, nil, usagef("--usage-dedup-retention: want at least 1h, got %s", *m.dedup)
	}
	cfg := metering.Config{URL: *m.url, Auth: *m.auth, BatchSize: *m.batch, MaxAttempts: *m.attempts,
		Timeout: *m.timeout, BackoffMax: *m.backoffMax}
	if cfg.URL != "" {
		if _, err := metering.New(nil, cfg); err != nil {
			return metering.Config{}, nil, usagef("%v", err)
		}
	}
	return cfg, meters, nil
}

// secretFlag returns the value of a flag holding a secret: the command
// line's if given, else the variable's. Its default is always "", so that
// --help does not print the secret.
func secretFlag(fs *flag.FlagSet, name, key string) string {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if set {
		return fs.Lookup(name).Value.String()
	}
	return envDefault(key, "")
}

// intEnv reads a whole number from the environment, falling back to def
// (with a warning) when it does not parse.
func intEnv(key string, def int) int {
	s := envDefault(key, "")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "causeway: ignoring %s=%q: %v\n", key, s, err)
		return def
	}
	return n
}
