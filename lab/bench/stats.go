package bench

import (
	"math"
	"slices"
)

// Median returns the median of xs: the middle value, or the mean of the two
// middle values when len(xs) is even. It returns NaN for an empty slice and
// ignores NaN values. xs is not modified.
func Median(xs []float64) float64 {
	s := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio returns a/b. ok is false when the ratio means nothing: b is not
// positive, or either value is NaN or infinite.
func Ratio(a, b float64) (r float64, ok bool) {
	if !finite(a) || !finite(b) || b <= 0 {
		return 0, false
	}
	return a / b, true
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
