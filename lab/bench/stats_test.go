package bench

import (
	"math"
	"slices"
	"testing"
)

func TestMedian(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{2, 2, 2, 9}, 2},
		{[]float64{-1, 0.5}, -0.25},
		{[]float64{nan, 5, 1, nan, 3}, 3},
	} {
		in := slices.Clone(tc.in)
		if got := Median(in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if !slices.EqualFunc(in, tc.in, func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }) {
			t.Errorf("Median(%v) modified its input to %v", tc.in, in)
		}
	}
	for _, in := range [][]float64{nil, {}, {nan}} {
		if got := Median(in); !math.IsNaN(got) {
			t.Errorf("Median(%v) = %v, want NaN", in, got)
		}
	}
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		a, b   float64
		want   float64
		wantOK bool
	}{
		{2.2e9, 2e9, 1.1, true},
		{0.44, 0.44, 1, true},
		{0, 3, 0, true},
		{-0.1, 0.4, -0.25, true},
		{1, 0, 0, false},
		{1, -0.2, 0, false},
		{math.NaN(), 1, 0, false},
		{1, math.NaN(), 0, false},
		{math.Inf(1), 1, 0, false},
	} {
		got, ok := Ratio(tc.a, tc.b)
		if ok != tc.wantOK || math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("Ratio(%v, %v) = %v, %v; want %v, %v", tc.a, tc.b, got, ok, tc.want, tc.wantOK)
		}
	}
}
