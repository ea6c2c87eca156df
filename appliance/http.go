package appliance

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// handler serves /healthz, /readyz and /metrics.
func (a *Appliance) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&peerCollector{a: a}, &followCollector{f: a.follow}, &a.metrics)
	if a.paths != nil {
		reg.MustRegister(&pathCollector{p: a.paths})
	}
	if a.gw != nil {
		reg.MustRegister(a.gw)
	}
	if a.pair != nil {
		reg.MustRegister(a.pair)
	}
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
	mux.HandleFunc("GET /pair", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if a.pair == nil {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": "this appliance is not a pair member"})
			return
		}
		json.NewEncoder(w).Encode(a.pair.view(a.Config().pairMember().VIP))
	})
	return mux
}

// extraCollectors are collectors added to a running appliance's /metrics
// (AddMetrics), such as those of the usage meter, which outlives the
// appliance. It is an unchecked collector: it describes nothing up front.
type extraCollectors struct {
	mu sync.Mutex
	cs []prometheus.Collector
}

func (e *extraCollectors) Describe(chan<- *prometheus.Desc) {}

func (e *extraCollectors) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	cs := slices.Clone(e.cs)
	e.mu.Unlock()
	for _, c := range cs {
		c.Collect(ch)
	}
}

// AddMetrics serves c's metrics on the appliance's /metrics too.
func (a *Appliance) AddMetrics(c prometheus.Collector) {
	a.metrics.mu.Lock()
	a.metrics.cs = append(a.metrics.cs, c)
	a.metrics.mu.Unlock()
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

// Path series are labelled by peer name, uplink name and remote endpoint:
// at most peers x uplinks x endpoints series each, all bounded by the
// config.
var (
	pathLabels  = []string{"peer", "uplink", "remote"}
	descPathUp  = prometheus.NewDesc("causeway_path_up", "1 if the path is up by its probes, 0 if down or not yet known.", pathLabels, nil)
	descPathRTT = prometheus.NewDesc("causeway_path_rtt_seconds",
		"Round-trip time of the path's probes over the last 50 replies (stat: min, mean, p50, p99).", append(pathLabels, "stat"), nil)
	descPathLoss = prometheus.NewDesc("causeway_path_loss_ratio",
		"Share of the path's last 50 settled probes that were lost (0 to 1).", pathLabels, nil)
	descPathJitter = prometheus.NewDesc("causeway_path_jitter_seconds",
		"RFC 3550 jitter of the path's round-trip times.", pathLabels, nil)
	descPathProbes = prometheus.NewDesc("causeway_path_probes_total",
		"Probes of the path by outcome: sent, received (answered in time), lost (unanswered after the loss timeout). Rates over any range give that range's loss.", append(pathLabels, "outcome"), nil)
	descPathActive = prometheus.NewDesc("causeway_path_active",
		"1 for the path the peer's traffic takes, 0 for the others.", pathLabels, nil)
	descPathChanges = prometheus.NewDesc("causeway_path_changes_total",
		"Moves of a peer's traffic to another path, by reason (initial, removed, down, sla, preferred).", []string{"reason"}, nil)
	descProbeRejected = prometheus.NewDesc("causeway_probe_rejected_total",
		"Probes dropped, by reason (bad_mac, unknown_key, malformed, wrong_path).", []string{"reason"}, nil)
)

// pathCollector reads the prober's path statistics at scrape time.
type pathCollector struct{ p *prober }

func (c *pathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPathUp, descPathRTT, descPathLoss, descPathJitter, descPathProbes, descPathActive, descPathChanges, descProbeRejected} {
		ch <- d
	}
}

func (c *pathCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, s := range c.p.status() {
		l := []string{s.Peer, s.Uplink, s.Remote.String()}
		gauge(descPathUp, flag(s.Stats.State == probes.StateUp), l...)
		gauge(descPathActive, flag(s.Active), l...)
		if s.Stats.Samples > 0 {
			for _, r := range []struct {
				stat string
				v    float64
			}{{"min", s.Stats.RTTMin.Seconds()}, {"mean", s.Stats.RTTMean.Seconds()}, {"p50", s.Stats.RTTP50.Seconds()}, {"p99", s.Stats.RTTP99.Seconds()}} {
				gauge(descPathRTT, r.v, append(l, r.stat)...)
			}
			gauge(descPathJitter, s.Stats.Jitter.Seconds(), l...)
		}
		if s.Stats.Settled > 0 {
			gauge(descPathLoss, s.Stats.LossPercent/100, l...)
		}
		for _, o := range []struct {
			outcome string
			v       uint64
		}{{"sent", s.Stats.Sent}, {"received", s.Stats.Received}, {"lost", s.Stats.Lost}} {
			ch <- prometheus.MustNewConstMetric(descPathProbes, prometheus.CounterValue, float64(o.v), append(l, o.outcome)...)
		}
	}
	counter := func(d *prometheus.Desc, v uint64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
	}
	k := c.p.counters()
	for _, r := range moveReasons {
		counter(descPathChanges, k.Moves[r], r.String())
	}
	counter(descProbeRejected, k.Reflector.BadMAC, "bad_mac")
	counter(descProbeRejected, k.Reflector.UnknownKey, "unknown_key")
	counter(descProbeRejected, k.Reflector.Malformed, "malformed")
	counter(descProbeRejected, k.WrongPath, "wrong_path")
}
