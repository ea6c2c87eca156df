package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// iperfPort is the iperf3 control and data port on the server host.
const iperfPort = 5201

// Throughput is the outcome of one iperf3 TCP test.
type Throughput struct {
	Streams int `json:"streams"`
	// BitsPerSecond is the receiver-side rate: what reached the server.
	BitsPerSecond float64 `json:"bits_per_second"`
	// SenderBitsPerSecond is what the client sent.
	SenderBitsPerSecond float64 `json:"sender_bits_per_second"`
	// Retransmits are the client's TCP retransmissions.
	Retransmits int `json:"retransmits"`
	// Seconds and Bytes are the measured interval (the omitted warm-up
	// left out) and what the server received in it.
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
}

// iperfReport is the part of `iperf3 -J` output the bench reads.
type iperfReport struct {
	Start struct {
		TestStart struct {
			Protocol   string `json:"protocol"`
			NumStreams int    `json:"num_streams"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// ParseIperf reads the JSON report of an iperf3 TCP client (`iperf3 -c
// ... -J`). A report that carries an error, or shows nothing received, is
// an error.
func ParseIperf(data []byte) (Throughput, error) {
	var r iperfReport
	if err := json.Unmarshal(bytes.TrimSpace(data), &r); err != nil {
		return Throughput{}, fmt.Errorf("iperf3 output is not a JSON report: %w: %.200q", err, data)
	}
	if r.Error != "" {
		return Throughput{}, &iperfError{r.Error}
	}
	ts := r.Start.TestStart
	if ts.Protocol != "TCP" {
		return Throughput{}, fmt.Errorf("iperf3 report is for protocol %q, want TCP", ts.Protocol)
	}
	rx := r.End.SumReceived
	if rx.Bytes <= 0 || rx.Seconds <= 0 || rx.BitsPerSecond <= 0 {
		return Throughput{}, errors.New("iperf3 report shows nothing received")
	}
	return Throughput{
		Streams:             ts.NumStreams,
		BitsPerSecond:       rx.BitsPerSecond,
		SenderBitsPerSecond: r.End.SumSent.BitsPerSecond,
		Retransmits:         r.End.SumSent.Retransmits,
		Seconds:             rx.Seconds,
		Bytes:               rx.Bytes,
	}, nil
}

// iperfError is the error an iperf3 report carries.
type iperfError struct{ msg string }

func (e *iperfError) Error() string { return "iperf3: " + e.msg }

// iperf runs one TCP test from the client host to the server host with
// the given number of parallel streams. The server is a fresh one-off
// iperf3 for each test, so that no test inherits the state of the one
// before.
func (b *bench) iperf(ctx context.Context, streams int) (Throughput, error) {
	addr, port := b.path.ServerAddr.String(), strconv.Itoa(iperfPort)
	ready := &watchWriter{want: []byte("Server listening"), seen: make(chan struct{})}
	cmd := b.command(b.path.Server,
		"iperf3", "-s", "-1", "--forceflush", "-B", addr, "-p", port)
	cmd.Stdout = ready
	srv, err := startProc("iperf3 server", cmd)
	if err != nil {
		return Throughput{}, err
	}
	defer srv.stop()
	select {
	case <-ready.seen:
	case <-srv.done:
		return Throughput{}, fmt.Errorf("iperf3 server on %s exited: %v: %s", b.path.Server, srv.err, srv.out)
	case <-time.After(10 * time.Second):
		return Throughput{}, fmt.Errorf("iperf3 server on %s did not start listening", b.path.Server)
	case <-ctx.Done():
		return Throughput{}, ctx.Err()
	}

	d := b.opts.Duration + b.opts.Omit
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := b.output(cctx, b.path.Client, "iperf3", "-c", addr, "-p", port,
		"-t", strconv.Itoa(int(b.opts.Duration/time.Second)), "-O", strconv.Itoa(int(b.opts.Omit/time.Second)),
		"-P", strconv.Itoa(streams), "-J", "--connect-timeout", "5000")
	t, perr := ParseIperf(out)
	var ie *iperfError
	switch {
	case errors.As(perr, &ie):
		// The report's own error explains more than the exit status.
		return Throughput{}, fmt.Errorf("%s -> %s: %w", b.path.Client, addr, perr)
	case perr != nil || err != nil:
		return Throughput{}, errors.Join(err, perr)
	}
	if t.Streams != streams {
		return Throughput{}, fmt.Errorf("iperf3 ran %d streams, want %d", t.Streams, streams)
	}
	return t, nil
}

// watchWriter discards what is written to it, and closes seen the first
// time want appears in it (within a line).
type watchWriter struct {
	want []byte
	seen chan struct{}

	mu   sync.Mutex // guards line and done
	line []byte
	done bool
}

func (w *watchWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(b), nil
	}
	w.line = append(w.line, b...)
	if bytes.Contains(w.line, w.want) {
		w.done = true
		w.line = nil
		close(w.seen)
		return len(b), nil
	}
	if i := bytes.LastIndexByte(w.line, '\n'); i >= 0 {
		w.line = append(w.line[:0], w.line[i+1:]...)
	}
	return len(b), nil
}
