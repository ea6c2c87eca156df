package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the controller's Prometheus metrics, on a registry of their
// own (no global state).
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	pushLag  prometheus.Histogram
}

// NewMetrics creates the metrics. connected reports how many appliances
// hold a sync request.
func NewMetrics(connected func() int) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "causeway_http_requests_total",
			Help: "API requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "causeway_http_request_duration_seconds",
			Help:    "API request latency by route pattern (sync long-polls included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route", "method"}),
		pushLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "causeway_push_lag_seconds",
			Help:    "Time from a change's commit to its netmaps being published on this replica.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.pushLag,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "causeway_connected_appliances",
			Help: "Appliances holding a sync request on this replica.",
		}, func() float64 { return float64(connected()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Register adds collectors (the metering worker's) to the registry
// /metrics serves.
func (m *Metrics) Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// ObservePush records one push lag; pass it as state.Options.OnPush.
func (m *Metrics) ObservePush(lag time.Duration) { m.pushLag.Observe(max(lag, 0).Seconds()) }

func (m *Metrics) observe(route, method string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
