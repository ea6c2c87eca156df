package appliance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/causeway-net/causeway/internal/atomicfile"
)

// The usage spool: the records the controller has not acknowledged yet,
// in the state directory (docs/usage-spool.md):
//
//	usage/seq                          next sequence number (atomic file)
//	usage/seg-<first seq, 20 digits>.jsonl  one record per line, appended and fsynced
//
// A sequence number is reserved in usage/seq (synced) before the record
// that carries it is appended, so a number is never used twice, even after
// a crash or after every record was acknowledged and deleted. A segment
// whose records are all acknowledged is deleted; one acknowledged in part
// is rewritten atomically with the rest. On open, a line that is not a
// whole record (the torn tail of an append a crash interrupted, or damage)
// is dropped, counted and logged, and its segment rewritten without it.

// Spool limits.
const (
	// DefaultUsageSpoolBytes bounds the spool on disk by default.
	DefaultUsageSpoolBytes = 64 << 20
	// MinUsageSpoolBytes is the smallest bound an operator may set.
	MinUsageSpoolBytes = 1 << 20
	// UsageDir is the spool's directory inside the state directory.
	UsageDir = "usage"

	usageSeqFile    = "seq"
	usageSegPrefix  = "seg-"
	usageSegSuffix  = ".jsonl"
	usageSegRecords = 500       // records per segment: one batch
	usageSegBytes   = 256 << 10 // bytes per segment
)

// spoolRec is one live record of a segment: where its line is.
type spoolRec struct {
	seq    uint64
	off, n int64 // the line, newline included
	end    time.Time
	bytes  uint64 // usage bytes, for the log of a drop
}

type spoolSeg struct {
	name  string
	recs  []spoolRec // live records, by seq
	lines int        // lines in the file, live or not
	size  int64      // file size
}

// usageSpoolOptions configure openUsageSpool.
type usageSpoolOptions struct {
	// MaxBytes bounds the segment files; 0 means DefaultUsageSpoolBytes.
	// From 7/8 of it on the meter writes one record per hour (coarse);
	// at the bound the oldest segment is dropped, counted and logged.
	MaxBytes int64
	Logger   *slog.Logger
}

// usageSpool is the on-disk queue of usage records. Its methods are safe
// for concurrent use; none of them waits on the network.
type usageSpool struct {
	dir      string
	max      int64
	coarseAt int64
	segBytes int64 // a segment's bound: a sixteenth of the spool, at most usageSegBytes
	log      *slog.Logger

	mu       sync.Mutex
	segs     []*spoolSeg
	f        *os.File // the last segment, open for appending; nil if not open
	next     uint64   // the next record's seq
	reserved uint64   // usage/seq: every seq below it may have been used
	size     int64    // bytes of all segments

	appended       atomic.Uint64
	droppedRecords atomic.Uint64
	droppedBytes   atomic.Uint64 // usage bytes in the dropped records, where known
}

// openUsageSpool opens (creating it if needed) the spool in dir, repairing
// what a crash left.
func openUsageSpool(dir string, o usageSpoolOptions) (*usageSpool, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultUsageSpoolBytes
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &usageSpool{dir: dir, max: o.MaxBytes, coarseAt: o.MaxBytes / 8 * 7,
		segBytes: min(usageSegBytes, o.MaxBytes/16), log: log.With("component", "usage-spool")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	seqPath := filepath.Join(dir, usageSeqFile)
	b, err := os.ReadFile(seqPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.reserved = 1
	case err != nil:
		return nil, fmt.Errorf("usage spool: %w", err)
	default:
		s.reserved, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || s.reserved == 0 {
			return nil, fmt.Errorf("usage spool: %s is damaged (%q); it must hold a number above every usage seq this appliance has sent (the controller knows the highest it stored)", seqPath, b)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	var last uint64
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			os.Remove(filepath.Join(dir, name)) // a temporary file of an interrupted rewrite
			continue
		}
		if !strings.HasPrefix(name, usageSegPrefix) || !strings.HasSuffix(name, usageSegSuffix) {
			continue
		}
		seg, err := s.load(name, &last)
		if err != nil {
			return nil, err
		}
		if seg != nil {
			s.segs = append(s.segs, seg)
			s.size += seg.size
		}
	}
	s.next = max(s.reserved, last+1)
	return s, nil
}

// load reads one segment; last is the highest seq seen so far (segments
// are read in order). Lines that are not whole records are dropped and
// the segment rewritten without them; an empty segment is removed.
func (s *usageSpool) load(name string, last *uint64) (*spoolSeg, error) {
	path := filepath.Join(s.dir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	seg, bad, torn := parseSegment(data, last)
	seg.name = name
	if bad+torn > 0 {
		s.countDropped(uint64(bad+torn), 0)
		s.log.Warn("usage spool: dropped lines that are not whole records", "segment", name,
			"torn_tail", torn, "damaged", bad, "kept", len(seg.recs))
		if err := s.rewrite(seg, data); err != nil {
			return nil, fmt.Errorf("usage spool: repairing %s: %w", path, err)
		}
	}
	if len(seg.recs) == 0 {
		if err := s.removeSeg(seg); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return seg, nil
}

// parseSegment indexes a segment's content: every line that is a whole,
// valid record with a seq above *last (which it advances). bad counts the
// other complete lines, torn a last line without its newline.
func parseSegment(data []byte, last *uint64) (seg *spoolSeg, bad, torn int) {
	seg = &spoolSeg{}
	off := 0
	for off < len(data) {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			torn++
			break
		}
		line := data[off : off+i]
		r, err := decodeSpoolLine(line)
		if err != nil || r.Seq <= *last {
			bad++
		} else {
			*last = r.Seq
			seg.recs = append(seg.recs, spoolRec{seq: r.Seq, off: int64(off), n: int64(i + 1), end: r.End, bytes: r.usageBytes()})
		}
		off += i + 1
	}
	seg.lines = len(seg.recs)
	seg.size = int64(off)
	return seg, bad, torn
}

// decodeSpoolLine parses one spooled record.
func decodeSpoolLine(line []byte) (UsageRecord, error) {
	var r UsageRecord
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, err
	}
	if dec.More() {
		return r, errors.New("data after the record")
	}
	if r.Seq == 0 || !r.End.After(r.Start) || len(r.Usage) == 0 {
		return r, errors.New("not a usage record")
	}
	return r, nil
}

// rewrite replaces seg's file, atomically, with its live records, whose
// lines are read from data (the file's current content).
func (s *usageSpool) rewrite(seg *spoolSeg, data []byte) error {
	var out []byte
	recs := make([]spoolRec, 0, len(seg.recs))
	for _, r := range seg.recs {
		line := data[r.off : r.off+r.n]
		r.off = int64(len(out))
		out = append(out, line...)
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		seg.recs, seg.lines, seg.size = nil, 0, 0
		return nil // the caller removes it
	}
	active := s.f != nil && len(s.segs) > 0 && s.segs[len(s.segs)-1] == seg
	if active {
		s.f.Close()
		s.f = nil
	}
	if err := atomicfile.Write(filepath.Join(s.dir, seg.name), out, 0o600); err != nil {
		return err
	}
	seg.recs, seg.lines, seg.size = recs, len(recs), int64(len(out))
	return nil
}

func (s *usageSpool) removeSeg(seg *spoolSeg) error {
	if s.f != nil && len(s.segs) > 0 && s.segs[len(s.segs)-1] == seg {
		s.f.Close()
		s.f = nil
	}
	if err := os.Remove(filepath.Join(s.dir, seg.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("usage spool: %w", err)
	}
	return atomicfile.SyncDir(s.dir)
}

// countDropped counts records given up and the usage bytes in them.
func (s *usageSpool) countDropped(records, usageBytes uint64) {
	s.droppedRecords.Add(records)
	s.droppedBytes.Add(usageBytes)
}

// coarse reports whether the spool is past its coarse mark.
func (s *usageSpool) coarse() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size >= s.coarseAt
}

// append gives r the next seq and writes it, synced, to the last segment
// (or a new one). When the spool is at its bound, the oldest segments are
// dropped to make room, counted and logged. On error nothing was
// appended (the seq reserved for it is skipped).
func (s *usageSpool) append(r *UsageRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := *r
	rec.Seq = s.next
	line, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	n := int64(len(line))
	for s.size+n > s.max && len(s.segs) > 0 {
		if err := s.dropOldest(); err != nil {
			return err
		}
	}
	if n > s.max {
		s.countDropped(1, rec.usageBytes())
		s.log.Error("usage record dropped: larger than the whole spool", "bytes", n, "max", s.max)
		return nil
	}
	// Reserve the seq before it can reach the disk in a record.
	if s.next >= s.reserved {
		if err := atomicfile.Write(filepath.Join(s.dir, usageSeqFile), []byte(strconv.FormatUint(s.next+1, 10)+"\n"), 0o600); err != nil {
			return fmt.Errorf("usage spool: reserving seq %d: %w", s.next, err)
		}
		s.reserved = s.next + 1
	}
	s.next++
	seg, err := s.activeSeg(rec.Seq, n)
	if err != nil {
		return err
	}
	if err := s.writeLine(seg, line); err != nil {
		return err
	}
	seg.recs = append(seg.recs, spoolRec{seq: rec.Seq, off: seg.size, n: n, end: rec.End, bytes: rec.usageBytes()})
	seg.lines++
	seg.size += n
	s.size += n
	s.appended.Add(1)
	r.Seq = rec.Seq
	return nil
}

// activeSeg returns the segment to append a line of n bytes with seq to,
// open in s.f: the last one, or a new one when that is full.
func (s *usageSpool) activeSeg(seq uint64, n int64) (*spoolSeg, error) {
	if k := len(s.segs); k > 0 {
		last := s.segs[k-1]
		if last.lines < usageSegRecords && last.size+n <= s.segBytes {
			if s.f == nil {
				f, err := os.OpenFile(filepath.Join(s.dir, last.name), os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					return nil, fmt.Errorf("usage spool: %w", err)
				}
				s.f = f
			}
			return last, nil
		}
	}
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	seg := &spoolSeg{name: fmt.Sprintf("%s%020d%s", usageSegPrefix, seq, usageSegSuffix)}
	f, err := os.OpenFile(filepath.Join(s.dir, seg.name), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	s.f = f
	s.segs = append(s.segs, seg)
	return seg, nil
}

// writeLine appends one line with a single write and syncs it. On error
// the file is cut back to where it was, so that no partial line stays
// for the next append to follow.
func (s *usageSpool) writeLine(seg *spoolSeg, line []byte) error {
	_, err := s.f.Write(line)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		s.f.Truncate(seg.size)
		s.f.Close()
		s.f = nil
		if len(seg.recs) == 0 {
			s.segs = s.segs[:len(s.segs)-1]
			os.Remove(filepath.Join(s.dir, seg.name))
		}
		return fmt.Errorf("usage spool: appending to %s: %w", seg.name, err)
	}
	return nil
}

// dropOldest gives up the oldest segment to make room.
func (s *usageSpool) dropOldest() error {
	seg := s.segs[0]
	var lost uint64
	for _, r := range seg.recs {
		lost += r.bytes
	}
	if err := s.removeSeg(seg); err != nil {
		return err
	}
	s.segs = s.segs[1:]
	s.size -= seg.size
	s.countDropped(uint64(len(seg.recs)), lost)
	first, lastSeq := uint64(0), uint64(0)
	if len(seg.recs) > 0 {
		first, lastSeq = seg.recs[0].seq, seg.recs[len(seg.recs)-1].seq
	}
	s.log.Error("usage spool full: dropped the oldest unacknowledged records", "records", len(seg.recs),
		"first_seq", first, "last_seq", lastSeq, "usage_bytes", lost, "max_bytes", s.max)
	return nil
}

// batch returns the oldest live records, at most maxRecords of them and
// (unless the first alone is larger) maxBytes of their lines, leaving out
// those skip says to.
func (s *usageSpool) batch(maxRecords int, maxBytes int64, skip func(seq uint64) bool) ([]UsageRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []UsageRecord
	var size int64
	for _, seg := range s.segs {
		var data []byte
		for _, r := range seg.recs {
			if skip != nil && skip(r.seq) {
				continue
			}
			if len(out) == maxRecords || (len(out) > 0 && size+r.n > maxBytes) {
				return out, nil
			}
			if data == nil {
				var err error
				if data, err = os.ReadFile(filepath.Join(s.dir, seg.name)); err != nil {
					return out, fmt.Errorf("usage spool: %w", err)
				}
			}
			if r.off+r.n > int64(len(data)) {
				return out, fmt.Errorf("usage spool: %s is shorter than its index", seg.name)
			}
			rec, err := decodeSpoolLine(data[r.off : r.off+r.n-1])
			if err != nil || rec.Seq != r.seq {
				return out, fmt.Errorf("usage spool: %s changed under the spool (seq %d)", seg.name, r.seq)
			}
			out = append(out, rec)
			size += r.n
		}
	}
	return out, nil
}

// ack deletes the records whose seqs are listed (others are ignored: a
// duplicate, or one deleted before) and returns how many it deleted.
func (s *usageSpool) ack(seqs []uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	set := make(map[uint64]bool, len(seqs))
	for _, q := range seqs {
		set[q] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	deleted := 0
	var errs []error
	keep := s.segs[:0:0]
	for _, seg := range s.segs {
		live := slices.DeleteFunc(slices.Clone(seg.recs), func(r spoolRec) bool { return set[r.seq] })
		gone := len(seg.recs) - len(live)
		if gone == 0 {
			keep = append(keep, seg)
			continue
		}
		if len(live) == 0 {
			if err := s.removeSeg(seg); err != nil {
				errs = append(errs, err)
				keep = append(keep, seg)
				continue
			}
			s.size -= seg.size
			deleted += gone
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, seg.name))
		if err == nil {
			before := seg.size
			old := seg.recs
			seg.recs = live
			if err = s.rewrite(seg, data); err != nil {
				seg.recs = old
			} else {
				s.size += seg.size - before
				deleted += gone
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("usage spool: rewriting %s: %w", seg.name, err))
		}
		keep = append(keep, seg)
	}
	s.segs = keep
	return deleted, errors.Join(errs...)
}

// usageSpoolStats are the spool's figures for /metrics.
type usageSpoolStats struct {
	Records        int
	Bytes          int64
	Oldest         time.Time // end of the oldest record; zero when empty
	Appended       uint64
	DroppedRecords uint64
	DroppedBytes   uint64
	NextSeq        uint64
}

func (s *usageSpool) stats() usageSpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := usageSpoolStats{Bytes: s.size, NextSeq: s.next, Appended: s.appended.Load(),
		DroppedRecords: s.droppedRecords.Load(), DroppedBytes: s.droppedBytes.Load()}
	for _, seg := range s.segs {
		if st.Records == 0 && len(seg.recs) > 0 {
			st.Oldest = seg.recs[0].end
		}
		st.Records += len(seg.recs)
	}
	return st
}

// close closes the open segment. The spool must not be used after.
func (s *usageSpool) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
