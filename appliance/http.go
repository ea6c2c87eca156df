package appliance

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// handler serves /healthz, /readyz and /metrics.
func (a *Appliance) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&peerCollector{a: a})
	mux := http.NewServeMux()
	health := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"status": "ok", "name": a.Config().Name, "public_key": a.PublicKey().String(),
		})
	}
	mux.HandleFunc("GET /healthz", health)
	mux.HandleFunc("GET /readyz", health)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

var (
	descInnerBytes = prometheus.NewDesc("causeway_peer_inner_bytes_total",
		"Inner IP bytes sent to (tx) or received from (rx) a peer through the tunnel.", []string{"peer", "direction"}, nil)
	descInnerPackets = prometheus.NewDesc("causeway_peer_inner_packets_total",
		"Inner IP packets sent to (tx) or received from (rx) a peer through the tunnel.", []string{"peer", "direction"}, nil)
	descWireBytes = prometheus.NewDesc("causeway_peer_wire_bytes_total",
		"Encrypted WireGuard bytes sent to (tx) or received from (rx) a peer.", []string{"peer", "direction"}, nil)
	descHandshake = prometheus.NewDesc("causeway_peer_last_handshake_seconds",
		"Unix time of the last completed handshake with a peer (0: none).", []string{"peer"}, nil)
	descUnrouted = prometheus.NewDesc("causeway_unrouted_packets_total",
		"Packets routed into the overlay interface that matched no peer.", nil, nil)
)

// peerCollector reads the dataplane's counters at scrape time, labelled
// by peer name (bounded by the config, not by traffic).
type peerCollector struct{ a *Appliance }

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInnerBytes, descInnerPackets, descWireBytes, descHandshake, descUnrouted} {
		ch <- d
	}
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	names := map[wgkey.PublicKey]string{}
	for _, p := range c.a.Config().Peers {
		names[p.PublicKey] = p.Name
	}
	stats, err := c.a.dev.Stats()
	if err != nil {
		c.a.log.Error("reading peer stats", "err", err)
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, s := range stats {
		name, ok := names[s.PublicKey]
		if !ok {
			continue
		}
		counter(descInnerBytes, s.Inner.TxBytes, name, "tx")
		counter(descInnerBytes, s.Inner.RxBytes, name, "rx")
		counter(descInnerPackets, s.Inner.TxPackets, name, "tx")
		counter(descInnerPackets, s.Inner.RxPackets, name, "rx")
		counter(descWireBytes, s.WireTxBytes, name, "tx")
		counter(descWireBytes, s.WireRxBytes, name, "rx")
		var hs float64
		if !s.LastHandshake.IsZero() {
			hs = float64(s.LastHandshake.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, hs, name)
	}
	counter(descUnrouted, c.a.dev.Unrouted().TxPackets)
}
