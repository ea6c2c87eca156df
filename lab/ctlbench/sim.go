package ctlbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
)

// Headers of a sync answer (see controller/api).
const (
	versionHeader = "Causeway-Netmap-Version"
	baseHeader    = "Causeway-Netmap-Base"
)

// arrival is one netmap a simulated appliance applied.
type arrival struct {
	version uint64
	at      time.Time
	bytes   int64
	delta   bool
	// watched reports whether it lists the peer the benchmark watched for
	// when it arrived.
	watched bool
}

// sim is one simulated appliance: control-plane client only. It holds one
// long-poll at a time, like appliance.RunManaged, and applies what comes
// back by decoding and validating it with netmap.Decode (or
// netmap.DecodeDelta), which is everything an appliance does with a
// netmap before configuring its dataplane.
type sim struct {
	e     *enrolled
	url   string
	http  *http.Client
	delta bool
	wait  time.Duration
	// watch names the peer whose arrival the benchmark waits for.
	watch *atomic.Pointer[string]
	// decode bounds how many simulated appliances read and decode at
	// once, so that N of them fit in one process.
	decode chan struct{}
	// notify is sent to (without blocking) after every arrival.
	notify chan<- struct{}

	version atomic.Uint64
	mu      sync.Mutex
	got     []arrival
	errs    int
	lastErr error
}

func newSim(e *enrolled, base string, delta bool, wait time.Duration, watch *atomic.Pointer[string], decode chan struct{}, notify chan<- struct{}) *sim {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
	}
	return &sim{e: e, url: base + "/api/v1/sync", http: &http.Client{Transport: tr}, delta: delta, wait: wait,
		watch: watch, decode: decode, notify: notify}
}

// first fetches the full netmap (since 0): the appliance's starting point.
func (s *sim) first(ctx context.Context) error {
	_, err := s.poll(ctx, 0)
	return err
}

// run long-polls until ctx ends.
func (s *sim) run(ctx context.Context) {
	defer s.http.CloseIdleConnections()
	failures := 0
	for ctx.Err() == nil {
		_, err := s.poll(ctx, s.version.Load())
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.mu.Lock()
			s.errs++
			s.lastErr = err
			s.mu.Unlock()
			failures++
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(failures)*100*time.Millisecond, 2*time.Second)):
			}
			continue
		}
		failures = 0
	}
}

// poll makes one sync request; it reports whether a netmap arrived.
func (s *sim) poll(ctx context.Context, since uint64) (bool, error) {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}, "wait": {s.wait.String()}}
	if s.delta {
		q.Set("delta", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"?"+q.Encode(), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+s.e.credential)
	resp, err := s.http.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return false, nil
	case http.StatusOK:
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return false, fmt.Errorf("sync: %s: %s", resp.Status, b)
	}
	select {
	case s.decode <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	a, err := s.apply(resp, since)
	<-s.decode
	if err != nil {
		return false, err
	}
	s.version.Store(a.version)
	s.mu.Lock()
	s.got = append(s.got, a)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return true, nil
}

// apply reads and decodes one answer. A simulated appliance keeps only the
// version it holds, not the peers (N appliances of N peers each would not
// fit in one process), so a delta is validated on its own rather than
// merged with netmap.Netmap.Apply.
func (s *sim) apply(resp *http.Response, since uint64) (arrival, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, netmap.MaxSize+1))
	if err != nil {
		return arrival{}, err
	}
	a := arrival{bytes: int64(len(body))}
	watch := ""
	if p := s.watch.Load(); p != nil {
		watch = *p
	}
	if resp.Header.Get(baseHeader) != "" {
		d, err := netmap.DecodeDelta(body)
		if err != nil {
			return arrival{}, err
		}
		if d.Base != since || d.Appliance != s.e.id {
			return arrival{}, fmt.Errorf("delta against %d for %s; holding %d of %s", d.Base, d.Appliance, since, s.e.id)
		}
		a.version, a.delta = d.Version, true
		for i := range d.Peers {
			a.watched = a.watched || d.Peers[i].Name == watch
		}
	} else {
		nm, err := netmap.Decode(body)
		if err != nil {
			return arrival{}, err
		}
		if nm.Appliance != s.e.id {
			return arrival{}, fmt.Errorf("netmap for %s, expected %s", nm.Appliance, s.e.id)
		}
		a.version = nm.Version
		for i := range nm.Peers {
			a.watched = a.watched || nm.Peers[i].Name == watch
		}
	}
	if a.version <= since {
		return arrival{}, fmt.Errorf("netmap version %d is not newer than %d", a.version, since)
	}
	if v := resp.Header.Get(versionHeader); v != strconv.FormatUint(a.version, 10) {
		return arrival{}, fmt.Errorf("header says version %s, body %d", v, a.version)
	}
	a.at = time.Now()
	return a, nil
}

// appliedAt returns the first arrival at or after version v.
func (s *sim) appliedAt(v uint64) (arrival, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.got {
		if a.version >= v {
			return a, true
		}
	}
	return arrival{}, false
}

func (s *sim) errors() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.lastErr
}

var errIncomplete = errors.New("not every simulated appliance applied the change in time")
