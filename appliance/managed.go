package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
)

// ManagedOptions configure RunManaged. Local.StateDir and Controller must
// be set; Token is needed only for the first start.
type ManagedOptions struct {
	Local Local
	// Controller is the controller's base URL.
	Controller string
	// CAFingerprint pins the controller's CA (see ClientOptions).
	CAFingerprint string
	// Token is the one-time enrollment token. Ignored once enrolled.
	Token string
	// Name asks for an appliance name at enrollment; empty lets the
	// controller choose.
	Name string
	// Endpoints are the underlay addresses peers should send to, reported
	// at enrollment; empty for an appliance that only dials out.
	Endpoints []netip.AddrPort
	// SyncWait is how long one long-poll waits; 0 means 30 s.
	SyncWait time.Duration
	// MaxBackoff caps the retry delay after a failed sync; 0 means 30 s.
	MaxBackoff time.Duration
	// UsageInterval is how often a usage record is cut; 0 means
	// UsageInterval (10 s).
	UsageInterval time.Duration
	// UsageSpoolBytes bounds the usage spool in the state directory; 0
	// means DefaultUsageSpoolBytes.
	UsageSpoolBytes int64
	Logger          *slog.Logger
}

// RunManaged runs a controller-managed appliance until ctx ends: it
// enrolls on first start, brings the overlay up from the netmap it gets
// (or, when the controller is unreachable, from the last one it applied),
// and then follows the controller over one long-poll at a time. The overlay
// keeps running on the last netmap whatever happens to the controller.
// When ctx ends it removes everything it added.
func RunManaged(ctx context.Context, o ManagedOptions) (err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.SyncWait <= 0 {
		o.SyncWait = 30 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	key, err := LoadOrCreateKey(o.Local.StateDir)
	if err != nil {
		return err
	}
	enr, err := LoadEnrollment(o.Local.StateDir)
	if err != nil {
		return err
	}
	if enr != nil && o.Controller != "" && enr.Controller != o.Controller {
		log.Warn("enrolled with another controller URL; using the enrolled one",
			"enrolled", enr.Controller, "given", o.Controller)
	}
	m := &managed{log: log, local: o.Local}
	defer func() {
		if cerr := m.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	var first *netmap.Netmap
	if enr == nil {
		if o.Token == "" {
			return errors.New("not enrolled yet: give --token (a one-time enrollment token from 'causeway ctl tokens create')")
		}
		c, err := NewClient(ClientOptions{Controller: o.Controller, CAFingerprint: o.CAFingerprint})
		if err != nil {
			return err
		}
		enr, first, err = enrollWithRetry(ctx, c, EnrollRequest{Token: o.Token, Name: o.Name, PublicKey: key.Public(), Endpoints: o.Endpoints}, o.MaxBackoff, log)
		if err != nil {
			return err
		}
		enr.CAFingerprint = o.CAFingerprint
		if err := saveEnrollment(o.Local.StateDir, enr); err != nil {
			return fmt.Errorf("saving the enrollment: %w", err)
		}
		log.Info("enrolled", "appliance_id", enr.ApplianceID, "name", enr.Name, "controller", enr.Controller)
	} else if first, err = LoadNetmap(o.Local.StateDir); err != nil {
		log.Error("ignoring the saved netmap", "err", err)
		first = nil
	} else if first != nil {
		log.Info("starting from the saved netmap", "version", first.Version)
	}
	c, err := NewClient(ClientOptions{Controller: enr.Controller, CAFingerprint: enr.CAFingerprint, Credential: enr.Credential})
	if err != nil {
		return err
	}
	// Usage metering (usage*.go): running before the first appliance, so
	// that it meters each one from its start; closed after the last.
	if m.usage, err = startUsage(usageOptions{StateDir: o.Local.StateDir, Send: c.ReportUsage,
		Interval: o.UsageInterval, SpoolBytes: o.UsageSpoolBytes, Logger: log}); err != nil {
		return err
	}
	if first != nil {
		if err := m.apply(first); err != nil {
			return err
		}
	}
	// Path history: the prober's aggregates go to the controller every
	// ReportInterval, from a goroutine of their own (joined before the
	// appliance closes: defers run last first).
	rep := newReporter(reporterOptions{Source: m.pathAggregates, Send: c.ReportPaths, Logger: log})
	rep.start()
	defer rep.close()
	// Pair reports: on every change of the member's role and every 30 s.
	prep := newPairReporter(m.pairState, c.ReportPair, log)
	m.setPairNotify(prep.poke)
	prep.start()
	defer prep.close()

	have := first
	failures := 0
	for ctx.Err() == nil {
		nm, err := c.Sync(ctx, have, o.SyncWait)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			failures++
			d := backoff(failures, o.MaxBackoff)
			log.Warn("sync failed; the overlay keeps running on the last netmap", "err", err, "retry_in", d.Round(time.Millisecond).String(), "netmap_version", version(have))
			sleep(ctx, d)
			continue
		}
		if failures > 0 {
			log.Info("controller reachable again", "after_failures", failures)
			failures = 0
		}
		if nm == nil {
			continue
		}
		have = nm
		if err := m.apply(nm); err != nil {
			log.Error("netmap refused; keeping the running config", "version", nm.Version, "request_id", nm.RequestID, "err", err)
		}
	}
	log.Info("shutting down", "reason", "signal")
	return nil
}

func version(nm *netmap.Netmap) uint64 {
	if nm == nil {
		return 0
	}
	return nm.Version
}

func enrollWithRetry(ctx context.Context, c *Client, req EnrollRequest, maxBackoff time.Duration, log *slog.Logger) (*Enrollment, *netmap.Netmap, error) {
	for attempt := 1; ; attempt++ {
		enr, nm, err := c.Enroll(ctx, req)
		if err == nil {
			return enr, nm, nil
		}
		var ae *APIError
		if errors.As(err, &ae) && ae.Permanent() || ctx.Err() != nil {
			return nil, nil, err
		}
		d := backoff(attempt, maxBackoff)
		log.Warn("enrollment failed; retrying", "err", err, "retry_in", d.Round(time.Millisecond).String())
		sleep(ctx, d)
	}
}

// managed holds the running appliance of RunManaged.
type managed struct {
	log   *slog.Logger
	local Local
	mu    sync.Mutex // guards a, which the path reporter reads, and pairNotify
	a     *Appliance
	usage *usage // nil until RunManaged starts it
	// pairNotify wakes the pair reporter (pairmember.go).
	pairNotify func()
}

// running returns the running appliance, nil before the first netmap.
func (m *managed) running() *Appliance {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.a
}

// setRunning records the running appliance and meters it.
func (m *managed) setRunning(a *Appliance) {
	m.mu.Lock()
	m.a = a
	notify := m.pairNotify
	m.mu.Unlock()
	a.notifyPair(notify)
	if m.usage != nil {
		m.usage.attach(a)
	}
	// Each Start makes a gateway of its own, with counters from 0.
	if a.gw != nil {
		m.setGatewayCounters(a.GatewayCounters)
	} else {
		m.setGatewayCounters(nil)
	}
}

// setGatewayCounters installs the Internet-gateway meter when the
// appliance becomes its site's gateway, once per gateway instance (its
// counters start at 0); nil when it stops being the gateway.
func (m *managed) setGatewayCounters(f GatewayCounters) {
	if m.usage != nil {
		m.usage.meter.setGateway(f)
	}
}

// pathAggregates is the path reporter's source: the aggregates of the
// appliance running now. An appliance replaced meanwhile keeps answering
// (its tracker outlives its prober), so a restart loses at most one
// interval.
func (m *managed) pathAggregates(now time.Time) []pathAggregate {
	return m.running().pathAggregates(now)
}

// apply moves the appliance to nm: in place when it can, by a restart when
// the overlay address changed, and saves nm once it is in force.
func (m *managed) apply(nm *netmap.Netmap) error {
	cfg, err := ConfigFromNetmap(m.local, nm)
	if err != nil {
		return err
	}
	switch {
	case m.a == nil:
		var a *Appliance
		a, err = Start(cfg, m.log)
		m.setRunning(a)
	default:
		// A change Apply cannot make in place (the overlay address, the
		// probe interval) restarts the dataplane: a short gap beats
		// running on a config the controller no longer means.
		var ce *ConfigError
		if err = m.a.Apply(cfg); errors.As(err, &ce) {
			m.log.Info("netmap changes a setting that needs a restart; restarting the dataplane", "why", err.Error())
			if cerr := m.a.Close(); cerr != nil {
				m.log.Error("stopping the dataplane", "err", cerr)
			}
			var a *Appliance
			a, err = Start(cfg, m.log)
			m.setRunning(a)
		}
	}
	if err != nil {
		return err
	}
	if err := SaveNetmap(m.local.StateDir, nm); err != nil {
		m.log.Error("saving the netmap (applied, but a restart without the controller would use an older one)", "err", err)
	}
	m.log.Info("netmap applied", "version", nm.Version, "request_id", nm.RequestID, "peers", len(nm.Peers))
	return nil
}

// close stops the appliance, then metering, whose final record then
// holds everything the appliance counted.
func (m *managed) close() error {
	var err error
	if m.a != nil {
		err = m.a.Close()
	}
	if m.usage != nil {
		err = errors.Join(err, m.usage.close())
	}
	return err
}

// backoff is exponential from 250 ms with full jitter, capped at max.
func backoff(attempt int, max time.Duration) time.Duration {
	d := 250 * time.Millisecond << min(attempt-1, 10)
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
