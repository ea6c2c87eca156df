package bindtest

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// BulkTUN is an in-memory tun.Device for throughput tests. While started,
// every Read returns a full batch of identical IPv4/UDP packets from Src to
// Dst (as a TUN with segmentation offloads hands WireGuard a batch per
// read); Write counts what WireGuard delivers and drops it. It sends no
// events, so WireGuard comes up only when told (device.Up), on the
// caller's thread and so in the caller's network namespace.
type BulkTUN struct {
	mtu    int
	pkt    []byte
	batch  int
	events chan tun.Event

	rxPackets, rxBytes atomic.Uint64

	mu     sync.Mutex    // guards gate and closed
	gate   chan struct{} // closed while started
	closed chan struct{}
	once   sync.Once
}

// NewBulkTUN returns a stopped BulkTUN whose packets are size bytes long
// (at most mtu) and which reads batch packets at a time.
func NewBulkTUN(mtu, size, batch int, src, dst netip.Addr) *BulkTUN {
	pkt := make([]byte, size)
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(size))
	pkt[8] = 64 // TTL
	pkt[9] = 17 // UDP
	s, d := src.As4(), dst.As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:], 9)
	binary.BigEndian.PutUint16(pkt[22:], 9)
	binary.BigEndian.PutUint16(pkt[24:], uint16(size-20))
	t := &BulkTUN{mtu: mtu, pkt: pkt, batch: batch, events: make(chan tun.Event, 1),
		gate: make(chan struct{}), closed: make(chan struct{})}
	return t
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// Start makes Read produce packets.
func (t *BulkTUN) Start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.gate:
	default:
		close(t.gate)
	}
}

// Stop makes Read block until Start or Close.
func (t *BulkTUN) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.gate:
		t.gate = make(chan struct{})
	default:
	}
}

// Received returns the packets and bytes WireGuard wrote.
func (t *BulkTUN) Received() (packets, bytes uint64) { return t.rxPackets.Load(), t.rxBytes.Load() }

// File returns nil: there is no file.
func (t *BulkTUN) File() *os.File { return nil }

// Read returns a batch of packets once started; os.ErrClosed after Close.
func (t *BulkTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.mu.Lock()
	gate := t.gate
	t.mu.Unlock()
	select {
	case <-gate:
	case <-t.closed:
		return 0, os.ErrClosed
	}
	n := min(len(bufs), t.batch)
	for i := range n {
		sizes[i] = copy(bufs[i][offset:], t.pkt)
	}
	return n, nil
}

// Write counts and drops the packets.
func (t *BulkTUN) Write(bufs [][]byte, offset int) (int, error) {
	var n uint64
	for _, b := range bufs {
		n += uint64(len(b) - offset)
	}
	t.rxPackets.Add(uint64(len(bufs)))
	t.rxBytes.Add(n)
	return len(bufs), nil
}

// MTU returns the MTU given to NewBulkTUN.
func (t *BulkTUN) MTU() (int, error) { return t.mtu, nil }

// Name returns "bulk".
func (t *BulkTUN) Name() (string, error) { return "bulk", nil }

// Events returns a channel that never delivers and is closed by Close.
func (t *BulkTUN) Events() <-chan tun.Event { return t.events }

// BatchSize returns the batch given to NewBulkTUN.
func (t *BulkTUN) BatchSize() int { return t.batch }

// Close unblocks Read and closes Events.
func (t *BulkTUN) Close() error {
	t.once.Do(func() {
		close(t.closed)
		close(t.events)
	})
	return nil
}
