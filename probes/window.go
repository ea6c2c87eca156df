package probes

import (
	"math"
	"slices"
	"time"
)

// sampleWindow holds the last len(buf) RTT samples, in nanoseconds.
type sampleWindow struct {
	buf  []int64
	head int // where the next sample goes
	n    int
	sum  int64
}

func newSampleWindow(size int) sampleWindow { return sampleWindow{buf: make([]int64, size)} }

func (w *sampleWindow) add(v int64) {
	if w.n == len(w.buf) {
		w.sum -= w.buf[w.head]
	} else {
		w.n++
	}
	w.buf[w.head] = v
	w.sum += v
	w.head = (w.head + 1) % len(w.buf)
}

// sorted appends the samples to dst[:0] and sorts them.
func (w *sampleWindow) sorted(dst []int64) []int64 {
	dst = append(dst[:0], w.buf[:w.n]...) // order does not matter once sorted
	slices.Sort(dst)
	return dst
}

// outcomeWindow holds whether each of the last len(buf) settled probes was
// lost.
type outcomeWindow struct {
	buf  []bool
	head int
	n    int
	lost int
}

func newOutcomeWindow(size int) outcomeWindow { return outcomeWindow{buf: make([]bool, size)} }

func (w *outcomeWindow) add(lost bool) {
	if w.n == len(w.buf) {
		if w.buf[w.head] {
			w.lost--
		}
	} else {
		w.n++
	}
	w.buf[w.head] = lost
	if lost {
		w.lost++
	}
	w.head = (w.head + 1) % len(w.buf)
}

func (w *outcomeWindow) lossPercent() float64 {
	if w.n == 0 {
		return 0
	}
	return 100 * float64(w.lost) / float64(w.n)
}

// percentile returns the nearest-rank q-th percentile (0 < q <= 100) of the
// sorted samples: the smallest sample that at least q percent of the samples
// do not exceed. It returns 0 for no samples.
func percentile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// jitter is the RFC 3550 (section 6.4.1) interarrival jitter estimator,
// applied to RTT samples in the order they arrive: for each sample after the
// first, with D the difference from the previous sample,
// J += (|D| - J) / 16.
type jitter struct {
	j    float64 // nanoseconds
	last int64
	have bool
}

func (j *jitter) add(rtt int64) {
	if j.have {
		d := math.Abs(float64(rtt - j.last))
		j.j += (d - j.j) / 16
	}
	j.last, j.have = rtt, true
}

func (j *jitter) value() time.Duration { return time.Duration(math.Round(j.j)) }

// reservoir keeps the RTT samples of one aggregation interval for its
// percentiles, in at most maxSamples entries: when full, it keeps every
// other sample and from then on records only every other one, so it stays a
// uniform, systematic sample of the interval. Min, max and mean are exact.
type reservoir struct {
	samples  []int64
	stride   int // record one sample in stride
	skip     int // samples to skip before the next one is recorded
	count    int
	sum      int64
	min, max int64
}

const maxSamples = 4096

func (r *reservoir) add(v int64) {
	if r.count == 0 || v < r.min {
		r.min = v
	}
	if r.count == 0 || v > r.max {
		r.max = v
	}
	r.count++
	r.sum += v
	if r.stride == 0 {
		r.stride = 1
	}
	if r.skip > 0 {
		r.skip--
		return
	}
	if len(r.samples) == maxSamples {
		for i := 0; i < maxSamples/2; i++ {
			r.samples[i] = r.samples[2*i]
		}
		r.samples = r.samples[:maxSamples/2]
		r.stride *= 2
	}
	r.samples = append(r.samples, v)
	r.skip = r.stride - 1
}

func (r *reservoir) reset() {
	*r = reservoir{samples: r.samples[:0]}
}
