package push

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
)

func nm(v uint64) *netmap.Netmap { return &netmap.Netmap{Version: v} }

func TestWait(t *testing.T) {
	h := New()
	ctx := context.Background()
	if _, err := h.Wait(ctx, "a", 0); !errors.Is(err, ErrGone) {
		t.Fatalf("unknown appliance: %v", err)
	}
	h.Publish("a", nm(3))
	if got, err := h.Wait(ctx, "a", 2); err != nil || got.Version != 3 {
		t.Fatalf("Wait(since 2) = %v, %v", got, err)
	}

	// A waiter holding the current version is woken by the next one.
	done := make(chan *netmap.Netmap)
	go func() {
		got, err := h.Wait(ctx, "a", 3)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	waitFor(t, func() bool { return h.IsConnected("a") && h.Connected() == 1 })
	h.Publish("b", nm(9)) // another appliance's change does not wake it
	select {
	case <-done:
		t.Fatal("woken by another appliance's netmap")
	case <-time.After(20 * time.Millisecond):
	}
	h.Publish("a", nm(4))
	if got := <-done; got.Version != 4 {
		t.Fatalf("woken with version %d", got.Version)
	}
	waitFor(t, func() bool { return h.Connected() == 0 })

	// Timeout.
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := h.Wait(tctx, "a", 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", err)
	}

	// Removal wakes waiters with ErrGone.
	errc := make(chan error)
	go func() { _, err := h.Wait(ctx, "a", 4); errc <- err }()
	waitFor(t, func() bool { return h.IsConnected("a") })
	h.Publish("a", nil)
	if err := <-errc; !errors.Is(err, ErrGone) {
		t.Fatalf("after removal: %v", err)
	}

	// Close wakes everyone.
	go func() { _, err := h.Wait(ctx, "b", 9); errc <- err }()
	waitFor(t, func() bool { return h.IsConnected("b") })
	h.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	h.Publish("b", nm(10))
	if h.Current("b") != nil {
		t.Fatal("Publish after Close stored a netmap")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(time.Millisecond)
	}
}
