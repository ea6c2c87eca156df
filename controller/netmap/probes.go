package netmap

import (
	"encoding/base64"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/causeway-net/causeway/probes"
)

// Bounds Decode enforces on the probe settings and on SLA thresholds.
const (
	MinProbeInterval = 10 * time.Millisecond
	MaxProbeInterval = time.Minute
	// MaxSLADelay bounds max_rtt_ms and max_jitter_ms.
	MaxSLADelay = time.Minute
)

// Probes is what an appliance needs to send and answer path probes (see
// package probes): the tenant's keys and the probe interval. The zero
// value means the controller distributes none; it is left out of the
// encoding.
type Probes struct {
	// Keys are the keys to load into the probes.Keyring: the one that signs
	// requests first, then up to probes.MaxAccepted more that are only
	// accepted (the next key while a rotation spreads, the previous one
	// after it).
	Keys []probes.Key
	// Interval is the mean time between two probes of a path, in whole
	// milliseconds.
	Interval time.Duration
}

// IsZero reports whether p carries no keys.
func (p *Probes) IsZero() bool { return len(p.Keys) == 0 }

// Equal reports whether two probe settings are the same.
func (p *Probes) Equal(q *Probes) bool {
	return p.Interval == q.Interval && slices.Equal(p.Keys, q.Keys)
}

// The JSON shapes of the probe settings and of a peer's SLA.
type wireProbes struct {
	Keys       []wireKey `json:"keys"`
	IntervalMS int64     `json:"interval_ms"`
}

type wireKey struct {
	ID     uint32 `json:"id"`
	Secret string `json:"secret"`
}

type wireSLA struct {
	MaxLossPercent float64 `json:"max_loss_percent"`
	MaxRTTMS       int64   `json:"max_rtt_ms"`
	MaxJitterMS    int64   `json:"max_jitter_ms"`
}

func (v *validator) probes(w *wireProbes) Probes {
	if w == nil {
		return Probes{}
	}
	var p Probes
	if n := len(w.Keys); n < 1 || n > 1+probes.MaxAccepted {
		v.fail("probes.keys", "want 1 to %d keys (the current one first), got %d", 1+probes.MaxAccepted, n)
	}
	ids := make(map[probes.KeyID]string, len(w.Keys))
	for i, wk := range w.Keys {
		field := fmt.Sprintf("probes.keys[%d]", i)
		id := probes.KeyID(wk.ID)
		if prev, dup := ids[id]; dup {
			v.fail(field+".id", "key id %d is also %s", id, prev)
			continue
		}
		ids[id] = field
		k, err := probes.ParseKey(id, wk.Secret)
		if err != nil {
			v.fail(field+".secret", "%v", err)
			continue
		}
		p.Keys = append(p.Keys, k)
	}
	iv := time.Duration(w.IntervalMS) * time.Millisecond
	if w.IntervalMS < 0 || iv < MinProbeInterval || iv > MaxProbeInterval {
		v.fail("probes.interval_ms", "want %d to %d, got %d", MinProbeInterval.Milliseconds(), MaxProbeInterval.Milliseconds(), w.IntervalMS)
	} else {
		p.Interval = iv
	}
	return p
}

func (v *validator) sla(field string, w *wireSLA) probes.SLA {
	if w == nil {
		return probes.SLA{}
	}
	var s probes.SLA
	if w.MaxLossPercent < 0 || w.MaxLossPercent > 100 || math.IsNaN(w.MaxLossPercent) {
		v.fail(field+".max_loss_percent", "want 0 to 100, got %v", w.MaxLossPercent)
	} else {
		s.MaxLossPercent = w.MaxLossPercent
	}
	for _, f := range []struct {
		name string
		ms   int64
		dst  *time.Duration
	}{{"max_rtt_ms", w.MaxRTTMS, &s.MaxRTT}, {"max_jitter_ms", w.MaxJitterMS, &s.MaxJitter}} {
		if f.ms < 0 || f.ms > MaxSLADelay.Milliseconds() {
			v.fail(field+"."+f.name, "want 0 to %d, got %d", MaxSLADelay.Milliseconds(), f.ms)
		} else {
			*f.dst = time.Duration(f.ms) * time.Millisecond
		}
	}
	return s
}

// appendProbes appends `,"probes":{...}` unless p is zero.
func appendProbes(dst []byte, p *Probes) []byte {
	if p.IsZero() {
		return dst
	}
	dst = append(dst, `,"probes":{"keys":[`...)
	for i, k := range p.Keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = strconv.AppendUint(dst, uint64(k.ID()), 10)
		// Standard base64 needs no JSON escaping.
		raw := k.Raw()
		dst = append(dst, `,"secret":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, raw[:])
		dst = append(dst, `"}`...)
	}
	dst = append(dst, `],"interval_ms":`...)
	dst = strconv.AppendInt(dst, p.Interval.Milliseconds(), 10)
	return append(dst, '}')
}

// appendSLA appends `,"sla":{...}` unless s is zero (no limits).
func appendSLA(dst []byte, s probes.SLA) []byte {
	if s == (probes.SLA{}) {
		return dst
	}
	dst = append(dst, `,"sla":{"max_loss_percent":`...)
	dst = appendFloat(dst, s.MaxLossPercent)
	dst = append(dst, `,"max_rtt_ms":`...)
	dst = strconv.AppendInt(dst, s.MaxRTT.Milliseconds(), 10)
	dst = append(dst, `,"max_jitter_ms":`...)
	dst = strconv.AppendInt(dst, s.MaxJitter.Milliseconds(), 10)
	return append(dst, '}')
}

// appendFloat formats f exactly as encoding/json does.
func appendFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// PeerSLAs is the SLA one appliance applies to each of its peers: the
// default, unless the peer's site has one of its own (a site-pair override
// involving the appliance's site). It lives outside the shared peer
// entries because it depends on the pair of sites, not on the peer alone;
// appliances of one site share one PeerSLAs. A PeerSLAs is immutable; nil
// means no limits toward any peer.
type PeerSLAs struct {
	def    probes.SLA
	bySite map[string]probes.SLA
	// defEnc and enc are the encodings (appendSLA) of def and of each
	// entry of bySite.
	defEnc []byte
	enc    map[string][]byte
}

// NewPeerSLAs returns the SLAs of an appliance that applies def to every
// peer except those at a site in bySite (by site id). Entries equal to def
// are dropped; the map is copied.
func NewPeerSLAs(def probes.SLA, bySite map[string]probes.SLA) *PeerSLAs {
	s := &PeerSLAs{def: def, defEnc: appendSLA(nil, def)}
	for site, sla := range bySite {
		if sla == def {
			continue
		}
		if s.bySite == nil {
			s.bySite, s.enc = map[string]probes.SLA{}, map[string][]byte{}
		}
		s.bySite[site] = sla
		s.enc[site] = appendSLA(nil, sla)
	}
	return s
}

// For returns the SLA toward a peer at the given site.
func (s *PeerSLAs) For(site string) probes.SLA {
	if s == nil {
		return probes.SLA{}
	}
	if sla, ok := s.bySite[site]; ok {
		return sla
	}
	return s.def
}

// Equal reports whether s and o give every site the same SLA.
func (s *PeerSLAs) Equal(o *PeerSLAs) bool {
	if s == nil || o == nil {
		return s.For("") == o.For("") && len(s.overrides()) == 0 && len(o.overrides()) == 0
	}
	return s.def == o.def && maps.Equal(s.bySite, o.bySite)
}

func (s *PeerSLAs) overrides() map[string]probes.SLA {
	if s == nil {
		return nil
	}
	return s.bySite
}

func (s *PeerSLAs) encFor(site string) []byte {
	if s == nil {
		return nil
	}
	if e, ok := s.enc[site]; ok {
		return e
	}
	return s.defEnc
}
