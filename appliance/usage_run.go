package appliance

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// usageOptions configure startUsage. StateDir and Send must be set.
type usageOptions struct {
	StateDir string
	Send     usageSender
	// Interval between records; 0 means UsageInterval.
	Interval time.Duration
	// SpoolBytes bounds the spool; 0 means DefaultUsageSpoolBytes.
	SpoolBytes int64
	// MaxBackoff caps the shipper's retry delay; 0 means one minute.
	MaxBackoff time.Duration
	Logger     *slog.Logger
}

// usage is the metering pipeline of a managed appliance: the meter cuts
// records into the spool, the shipper sends them. It outlives the
// appliances it meters (attach each one as it starts).
type usage struct {
	spool *usageSpool
	meter *usageMeter
	ship  *usageShipper
}

// startUsage opens the spool in the state directory and starts the meter
// and the shipper.
func startUsage(o usageOptions) (*usage, error) {
	sp, err := openUsageSpool(filepath.Join(o.StateDir, UsageDir), usageSpoolOptions{MaxBytes: o.SpoolBytes, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	u := &usage{spool: sp}
	u.ship = newUsageShipper(usageShipperOptions{Spool: sp, Send: o.Send, MaxBackoff: o.MaxBackoff, Logger: o.Logger})
	u.meter = newUsageMeter(usageMeterOptions{Spool: sp, Interval: o.Interval, Appended: u.ship.poke, Logger: o.Logger})
	u.meter.run()
	u.ship.run()
	if o.Logger != nil {
		st := sp.stats()
		o.Logger.Info("usage metering on", "component", "usage", "interval", u.meter.opts.Interval.String(),
			"spooled_records", st.Records, "next_seq", st.NextSeq)
	}
	return u, nil
}

// attach meters a newly started appliance (nil: none runs now); see
// usageMeter.attach.
func (u *usage) attach(a *Appliance) {
	if a == nil {
		u.meter.attach(nil)
		return
	}
	u.meter.attach(a)
	a.AddMetrics(u)
}

// close cuts the final record (the appliance should be closed already, so
// that it holds everything counted), then stops the shipper and closes
// the spool. What is not acknowledged yet is sent after the next start.
func (u *usage) close() error {
	u.meter.close()
	u.ship.close()
	return u.spool.close()
}

var (
	descUsageSpoolRecords = prometheus.NewDesc("causeway_usage_spool_records",
		"Usage records in the spool, not yet acknowledged by the controller.", nil, nil)
	descUsageSpoolBytes = prometheus.NewDesc("causeway_usage_spool_bytes",
		"Size of the usage spool on disk.", nil, nil)
	descUsageSpoolAge = prometheus.NewDesc("causeway_usage_spool_oldest_age_seconds",
		"Age of the oldest record in the spool (since its end); 0 when the spool is empty.", nil, nil)
	descUsageMemory = prometheus.NewDesc("causeway_usage_memory_records",
		"Usage records cut but not yet in the spool (the spool is coarse or failing).", nil, nil)
	descUsageRecords = prometheus.NewDesc("causeway_usage_records_total",
		"Usage records written to the spool.", nil, nil)
	descUsageShipped = prometheus.NewDesc("causeway_usage_shipped_total",
		"Usage records by the outcome of the request that carried them: acked (deleted from the spool), refused (400/413, kept), failed (network, 5xx, bad answer; kept).", []string{"result"}, nil)
	descUsageHeld = prometheus.NewDesc("causeway_usage_held_records",
		"Spooled records the controller refused alone, held back before the next try.", nil, nil)
	descUsageDropped = prometheus.NewDesc("causeway_usage_dropped_total",
		"Usage records given up: the spool at its bound, a torn or damaged line, a record that could not be written at shutdown.", nil, nil)
	descUsageDroppedBytes = prometheus.NewDesc("causeway_usage_dropped_bytes_total",
		"Usage bytes in the dropped records, where known (a torn line's are not).", nil, nil)
	descUsageBytes = prometheus.NewDesc("causeway_usage_bytes_total",
		"Bytes counted into usage records by meter (overlay, gateway) and direction.", []string{"meter", "direction"}, nil)
	descUsagePackets = prometheus.NewDesc("causeway_usage_packets_total",
		"Packets counted into usage records by meter (overlay, gateway) and direction.", []string{"meter", "direction"}, nil)
	descUsageResets = prometheus.NewDesc("causeway_usage_counter_resets_total",
		"Times a source's counters went backwards and were counted from 0.", nil, nil)
)

// Describe sends nothing: usage is added to a running appliance's
// registry as part of an unchecked collector (extraCollectors).
func (u *usage) Describe(chan<- *prometheus.Desc) {}

func (u *usage) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	st := u.spool.stats()
	ms := u.meter.stats()
	gauge(descUsageSpoolRecords, float64(st.Records))
	gauge(descUsageSpoolBytes, float64(st.Bytes))
	var age float64
	if !st.Oldest.IsZero() {
		age = max(time.Since(st.Oldest).Seconds(), 0)
	}
	gauge(descUsageSpoolAge, age)
	gauge(descUsageMemory, float64(ms.Held))
	counter(descUsageRecords, st.Appended)
	counter(descUsageShipped, u.ship.acked.Load(), "acked")
	counter(descUsageShipped, u.ship.refused.Load(), "refused")
	counter(descUsageShipped, u.ship.errored.Load(), "failed")
	gauge(descUsageHeld, float64(u.ship.heldCount()))
	counter(descUsageDropped, st.DroppedRecords)
	counter(descUsageDroppedBytes, st.DroppedBytes)
	for _, meter := range []string{MeterOverlay, MeterGateway} {
		for _, dir := range []string{DirTx, DirRx} {
			s := ms.Counted[usageKey{meter: meter, dir: dir}]
			counter(descUsageBytes, s.bytes, meter, dir)
			counter(descUsagePackets, s.packets, meter, dir)
		}
	}
	counter(descUsageResets, ms.Resets)
}
