package lab

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The delay stage: netem without netem.
//
// The kernel the lab must run on may lack netem, so the lab delays packets
// in a process of its own. `causeway lab delay-stage` runs in the inet
// namespace and owns one TUN device per impaired link. Policy routing (see
// impair.go) sends every packet that inet would put into the link through
// the TUN; the stage reads it, holds it until its release time, and writes
// it back, and inet then forwards it into the link as usual:
//
//	                 rule "to <link subnet>"      rule "iif dlyN": main
//	any interface ──▶ dlyN (TUN) ──▶ stage ──▶ dlyN ──▶ link ──▶ appliance
//
// Each packet's release time is its arrival plus the delay plus a uniform
// random offset in [-jitter, +jitter] (never before its arrival). Packets
// leave in release-time order: without jitter they keep their order;
// with it, two packets swap only if their release times do, which takes
// jitter larger than half the gap between them, as with netem.
//
// The whole stage is one loop on one locked OS thread: ppoll(2) on the
// non-blocking TUN with a nanosecond timeout until the next release time
// (the Go runtime's timers wake with millisecond granularity when idle,
// too coarse here), with a timer slack of 1 ns. On an idle machine it adds
// tens of microseconds to the configured delay.

// delayStageMax bounds the packets held at once; beyond it new packets are
// dropped, like a full queue.
const delayStageMax = 100000

// DelayStageOptions configure RunDelayStage.
type DelayStageOptions struct {
	// TUN is the name of the TUN device to create (required).
	TUN string
	// Delay is added to every packet; Jitter is the half-width of the
	// uniform random offset added to it.
	Delay, Jitter time.Duration
	// Ready, if set, is called once the TUN device exists.
	Ready func()
}

// RunDelayStage creates the TUN device in the calling process's network
// namespace and delays what passes through it until ctx is done. The
// device goes away with the process.
func RunDelayStage(ctx context.Context, o DelayStageOptions) error {
	if o.Delay < 0 || o.Jitter < 0 {
		return errors.New("delay stage: negative delay or jitter")
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: the runtime ends it with the
		// goroutine, timer slack and all.
		runtime.LockOSThread()
		errc <- runDelayLoop(ctx, o)
	}()
	return <-errc
}

func runDelayLoop(ctx context.Context, o DelayStageOptions) error {
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	fd, err := openTUN(o.TUN)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if o.Ready != nil {
		o.Ready()
	}
	st := newDelayQueue(o.Delay, o.Jitter)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		// Wake for the next release, or at least every 100 ms to notice ctx.
		wait := 100 * time.Millisecond
		if at, ok := st.next(); ok {
			wait = min(wait, max(time.Until(at), 0))
		}
		ts := unix.NsecToTimespec(wait.Nanoseconds())
		if _, err := unix.Ppoll(fds, &ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("delay stage: ppoll: %w", err)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			for {
				n, err := unix.Read(fd, buf)
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					break
				}
				if err != nil {
					return fmt.Errorf("delay stage: reading %s: %w", o.TUN, err)
				}
				if st.len() < delayStageMax {
					st.push(buf[:n], time.Now())
				}
			}
		}
		for now := time.Now(); ; {
			p, ok := st.popDue(now)
			if !ok {
				break
			}
			// A write to a TUN hands the packet to the stack at once; a
			// packet it refuses (none should be) is lost, as on a link.
			_, _ = unix.Write(fd, p)
			st.free(p)
		}
	}
	return nil
}

// openTUN creates a TUN device (IPv4 packets, no packet information
// header) and returns its non-blocking file descriptor.
func openTUN(name string) (int, error) {
	if len(name) >= unix.IFNAMSIZ {
		return -1, fmt.Errorf("delay stage: TUN name %q too long", name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("delay stage: %w", err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TUN | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("delay stage: creating TUN %s: %w", name, e)
	}
	return fd, nil
}

// delayQueue holds packets until their release time. It is not safe for
// concurrent use.
type delayQueue struct {
	delay, jitter time.Duration
	rnd           *rand.Rand
	h             delayHeap
	seq           uint64
	pool          [][]byte
}

func newDelayQueue(delay, jitter time.Duration) *delayQueue {
	return &delayQueue{delay: delay, jitter: jitter, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// releaseAfter is one packet's hold time: delay ± uniform jitter, never
// negative.
func (q *delayQueue) releaseAfter() time.Duration {
	d := q.delay
	if q.jitter > 0 {
		d += time.Duration(q.rnd.Int64N(2*int64(q.jitter)+1)) - q.jitter
	}
	return max(d, 0)
}

// push copies pkt in, to be released at arrival plus its hold time.
func (q *delayQueue) push(pkt []byte, arrival time.Time) {
	var b []byte
	if n := len(q.pool); n > 0 {
		b, q.pool = q.pool[n-1][:0], q.pool[:n-1]
	}
	b = append(b, pkt...)
	q.seq++
	heap.Push(&q.h, delayed{at: arrival.Add(q.releaseAfter()), seq: q.seq, pkt: b})
}

func (q *delayQueue) len() int { return len(q.h) }

// next is the earliest release time.
func (q *delayQueue) next() (time.Time, bool) {
	if len(q.h) == 0 {
		return time.Time{}, false
	}
	return q.h[0].at, true
}

// popDue removes and returns the earliest packet if it is due at now.
func (q *delayQueue) popDue(now time.Time) ([]byte, bool) {
	if len(q.h) == 0 || q.h[0].at.After(now) {
		return nil, false
	}
	return heap.Pop(&q.h).(delayed).pkt, true
}

// free returns a released packet's buffer for reuse.
func (q *delayQueue) free(b []byte) {
	if len(q.pool) < 1024 {
		q.pool = append(q.pool, b)
	}
}

type delayed struct {
	at  time.Time
	seq uint64 // arrival order, to break ties
	pkt []byte
}

// delayHeap is a min-heap by release time, then arrival.
type delayHeap []delayed

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if c := h[i].at.Compare(h[j].at); c != 0 {
		return c < 0
	}
	return h[i].seq < h[j].seq
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)   { *h = append(*h, x.(delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = delayed{}
	*h = old[:len(old)-1]
	return x
}
