package probes

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	seq := func(n int) []int64 {
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(i + 1)
		}
		return s
	}
	tests := []struct {
		name   string
		sorted []int64
		q      float64
		want   int64
	}{
		{"empty", nil, 50, 0},
		{"one", []int64{7}, 50, 7},
		{"one p99", []int64{7}, 99, 7},
		{"two p50", []int64{1, 2}, 50, 1},
		{"two p99", []int64{1, 2}, 99, 2},
		{"1..100 p50", seq(100), 50, 50},
		{"1..100 p99", seq(100), 99, 99},
		{"1..100 p100", seq(100), 100, 100},
		{"1..100 p1", seq(100), 1, 1},
		{"1..10 p50", seq(10), 50, 5},
		{"1..10 p99", seq(10), 99, 10},
		{"1..50 p99 is the max", seq(50), 99, 50},
		{"1..1000 p99", seq(1000), 99, 990},
		{"ties", []int64{1, 5, 5, 5, 9}, 50, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.q); got != tc.want {
				t.Errorf("percentile(%v, %v) = %d, want %d", tc.sorted, tc.q, got, tc.want)
			}
		})
	}
}

// TestPercentileDefinition checks the nearest-rank definition on random
// samples: the result is a sample, at least q% of the samples are <= it, and
// fewer than q% are < it.
func TestPercentileDefinition(t *testing.T) {
	r := seeded(2)
	for range 2000 {
		s := make([]int64, 1+r.IntN(120))
		for i := range s {
			s[i] = r.Int64N(40)
		}
		slices.Sort(s)
		for _, q := range []float64{1, 10, 50, 90, 99, 100} {
			v := percentile(s, q)
			var le, lt int
			for _, x := range s {
				if x <= v {
					le++
				}
				if x < v {
					lt++
				}
			}
			n := float64(len(s))
			if !slices.Contains(s, v) || float64(le) < q/100*n-1e-9 || float64(lt) >= q/100*n {
				t.Fatalf("percentile(%v, %v) = %d: %d <= it, %d < it", s, q, v, le, lt)
			}
		}
	}
}

func TestJitter(t *testing.T) {
	closed := func(d float64, n int) float64 { return d * (1 - math.Pow(15.0/16, float64(n))) }
	tests := []struct {
		name string
		rtts []time.Duration
		want float64 // nanoseconds
	}{
		{"none", nil, 0},
		{"one sample", []time.Duration{50 * ms}, 0},
		{"constant", []time.Duration{20 * ms, 20 * ms, 20 * ms, 20 * ms}, 0},
		{"one step", []time.Duration{20 * ms, 36 * ms}, float64(ms)}, // |D| = 16 ms, J = 16/16
		{"step then flat", []time.Duration{20 * ms, 36 * ms, 36 * ms}, float64(ms) * 15 / 16},
		// RFC 3550 uses |D| whatever the sign.
		{"down step", []time.Duration{36 * ms, 20 * ms}, float64(ms)},
		{"alternating 10/20 ms", alternating(10*ms, 20*ms, 101), closed(float64(10*ms), 100)},
		{"alternating converges", alternating(10*ms, 20*ms, 2001), float64(10 * ms)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var j jitter
			for _, r := range tc.rtts {
				j.add(int64(r))
			}
			if got := float64(j.value()); math.Abs(got-tc.want) > 1 {
				t.Errorf("jitter = %v, want %v", time.Duration(got), time.Duration(tc.want))
			}
		})
	}
}

func alternating(a, b time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = a
		if i%2 == 1 {
			out[i] = b
		}
	}
	return out
}

func TestSampleWindow(t *testing.T) {
	w := newSampleWindow(4)
	var all []int64
	for i := int64(1); i <= 11; i++ {
		v := (i * 37) % 13
		w.add(v)
		all = append(all, v)
		last := all[max(0, len(all)-4):]
		var sum int64
		for _, x := range last {
			sum += x
		}
		want := slices.Sorted(slices.Values(last))
		if got := w.sorted(nil); !slices.Equal(got, want) || w.sum != sum || w.n != len(last) {
			t.Fatalf("after %d: window %v sum %d, want %v sum %d", i, got, w.sum, want, sum)
		}
	}
}

func TestOutcomeWindow(t *testing.T) {
	w := newOutcomeWindow(5)
	if w.lossPercent() != 0 {
		t.Fatal("empty window has loss")
	}
	for _, lost := range []bool{true, false, false, false, false, true, false} {
		w.add(lost)
	}
	// The window holds the last five: f f f t f.
	if got := w.lossPercent(); got != 20 {
		t.Errorf("loss = %v%%, want 20%%", got)
	}
}

func TestReservoir(t *testing.T) {
	var r reservoir
	const n = 3*maxSamples + 17
	for i := range n {
		r.add(int64(i))
	}
	if r.count != n || r.min != 0 || r.max != n-1 || r.sum != int64(n)*(n-1)/2 {
		t.Fatalf("exact figures wrong: count %d min %d max %d sum %d", r.count, r.min, r.max, r.sum)
	}
	if len(r.samples) > maxSamples {
		t.Fatalf("%d samples kept, cap %d", len(r.samples), maxSamples)
	}
	// A systematic sample of a ramp keeps its percentiles within a stride.
	s := slices.Sorted(slices.Values(r.samples))
	for _, q := range []float64{50, 99} {
		got, want := percentile(s, q), int64(q/100*n)
		if d := got - want; d < -int64(r.stride) || d > int64(r.stride) {
			t.Errorf("p%v = %d, want %d ± %d", q, got, want, r.stride)
		}
	}
	r.reset()
	if r.count != 0 || len(r.samples) != 0 {
		t.Fatal("reset left samples")
	}
}
