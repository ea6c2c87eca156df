package probes

import (
	"testing"
	"time"
)

// BenchmarkParse is the receive path of a reply: IsProbe, then Parse with
// its MAC check.
func BenchmarkParse(b *testing.B) {
	kr := testKeyring(b, 1, 2)
	pkt := mustMarshal(b, Packet{Kind: KindReply, Path: 1, Seq: 1, Timestamp: 1}, kr)
	b.ReportAllocs()
	b.SetBytes(Size)
	for b.Loop() {
		if !IsProbe(pkt) {
			b.Fatal("not a probe")
		}
		if _, err := Parse(pkt, kr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseParallel(b *testing.B) {
	kr := testKeyring(b, 1)
	pkt := mustMarshal(b, Packet{Kind: KindReply, Path: 1, Seq: 1}, kr)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Parse(pkt, kr); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMarshal(b *testing.B) {
	kr := testKeyring(b, 1)
	buf := make([]byte, 0, Size)
	p := Packet{Kind: KindRequest, Path: 1, Seq: 1, Timestamp: 1}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(buf[:0], p, kr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReflect(b *testing.B) {
	kr := testKeyring(b, 1)
	r := NewReflector(kr)
	req := mustMarshal(b, Packet{Kind: KindRequest, Path: 1, Seq: 1}, kr)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Reflect(req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPathUpdate is the tracker update path of one probe: Probe, Reply
// and Advance.
func BenchmarkPathUpdate(b *testing.B) {
	p := NewPath(1, Options{}, t0)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		req := p.Probe(now)
		now = now.Add(20 * time.Millisecond)
		if err := p.Reply(req.Reply(), now); err != nil {
			b.Fatal(err)
		}
		p.Advance(now)
		now = now.Add(180 * time.Millisecond)
	}
}

// BenchmarkTrackerHandleReply is what a receive goroutine of the bind does
// per reply, with the tracker holding 6 paths.
func BenchmarkTrackerHandleReply(b *testing.B) {
	tr := NewTracker(Options{})
	for id := PathID(1); id <= 6; id++ {
		must(b, tr.Add(id, t0))
	}
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(50 * time.Millisecond)
		reqs, _ := tr.Poll(now)
		for _, r := range reqs {
			if err := tr.HandleReply(r.Reply(), now.Add(10*time.Millisecond)); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkStats(b *testing.B) {
	p := NewPath(1, Options{}, t0)
	now := t0
	for range 100 {
		req := p.Probe(now)
		now = now.Add(time.Duration(10+int(req.Seq)%30) * time.Millisecond)
		p.Reply(req.Reply(), now)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Stats()
	}
}

func BenchmarkSelect(b *testing.B) {
	s := NewSelector(SelectorOptions{SLA: SLA{MaxLossPercent: 2, MaxRTT: 150 * time.Millisecond}})
	cands := []Candidate{c(1, 10, good), c(2, 20, good), c(3, 30, good), c(4, 40, good), c(5, 50, good), c(6, 60, good)}
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(200 * time.Millisecond)
		s.Select(now, cands)
	}
}
