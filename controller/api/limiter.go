package api

import (
	"sync"
	"time"
)

// failLimiter counts failed authentication and enrollment attempts per
// client address in fixed windows. Once a client has failed max times in
// a window, every attempt it makes is refused until the window ends, so
// guessing tokens gains nothing from speed.
type failLimiter struct {
	max    int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	clients map[string]*failWindow
}

type failWindow struct {
	start time.Time
	fails int
}

func newFailLimiter(max int, window time.Duration, now func() time.Time) *failLimiter {
	return &failLimiter{max: max, window: window, now: now, clients: map[string]*failWindow{}}
}

// blocked reports whether client is locked out, and for how long.
func (l *failLimiter) blocked(client string) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.clients[client]
	if w == nil {
		return 0, false
	}
	left := l.window - l.now().Sub(w.start)
	if left <= 0 {
		delete(l.clients, client)
		return 0, false
	}
	return left, w.fails >= l.max
}

// fail records one failure by client.
func (l *failLimiter) fail(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	w := l.clients[client]
	if w == nil || now.Sub(w.start) >= l.window {
		if len(l.clients) > 100_000 {
			l.sweepLocked(now)
		}
		w = &failWindow{start: now}
		l.clients[client] = w
	}
	w.fails++
}

func (l *failLimiter) sweepLocked(now time.Time) {
	for c, w := range l.clients {
		if now.Sub(w.start) >= l.window {
			delete(l.clients, c)
		}
	}
}
