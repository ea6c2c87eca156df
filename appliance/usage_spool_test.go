package appliance

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// spoolWriterEnv makes the test binary a process that appends records to
// the spool in the named directory until it is killed, printing each seq
// once its append returned (TestUsageSpoolKill).
const spoolWriterEnv = "CAUSEWAY_TEST_USAGE_SPOOL_WRITER"

func init() {
	if dir := os.Getenv(spoolWriterEnv); dir != "" {
		os.Exit(runSpoolWriter(dir))
	}
}

func runSpoolWriter(dir string) int {
	sp, err := openUsageSpool(dir, usageSpoolOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; ; i++ {
		r := testRecord(start.Add(time.Duration(i)*time.Second), uint64(i+1))
		if err := sp.append(&r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("seq", r.Seq)
	}
}

func testRecord(start time.Time, bytes uint64) UsageRecord {
	return UsageRecord{Start: start, End: start.Add(time.Second), Usage: []UsageEntry{
		{Meter: MeterOverlay, PeerSite: "st_b", Direction: DirTx, Bytes: bytes, Packets: 1}}}
}

func appendN(t *testing.T, sp *usageSpool, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		r := testRecord(start.Add(time.Duration(i)*time.Second), 100)
		if err := sp.append(&r); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

func seqsOf(recs []UsageRecord) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, usageSegPrefix+"*"+usageSegSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestUsageSpoolRestartKeepsSeq: records and the seq survive a reopen,
// and a seq is never used again, even after every record was acked and
// its segment deleted.
func TestUsageSpoolRestartKeepsSeq(t *testing.T) {
	dir := t.TempDir()
	sp := testSpool(t, dir, 0)
	if got := appendN(t, sp, 3); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("seqs %v", got)
	}
	sp.close()
	sp = testSpool(t, dir, 0)
	if got := seqsOf(spooled(t, sp)); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("after reopen: %v", got)
	}
	if n, err := sp.ack([]uint64{1, 2, 3}); n != 3 || err != nil {
		t.Fatalf("ack: %d, %v", n, err)
	}
	if f := segFiles(t, dir); len(f) != 0 {
		t.Errorf("segments left after every record was acked: %v", f)
	}
	sp.close()
	sp = testSpool(t, dir, 0)
	if got := appendN(t, sp, 1); got[0] != 4 {
		t.Errorf("after a fully acked spool and a restart, next seq %d, want 4", got[0])
	}
}

// TestUsageSpoolTornTail writes what a crash in the middle of an append
// leaves (the seq reserved, half a line) and a damaged line in the
// middle: both are dropped and counted on open, not fatal, the file is
// repaired and the torn record's seq is not used again.
func TestUsageSpoolTornTail(t *testing.T) {
	dir := t.TempDir()
	sp := testSpool(t, dir, 0)
	appendN(t, sp, 4)
	sp.close()
	segs := segFiles(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	data, _ := os.ReadFile(segs[0])
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = strings.Repeat("x", len(lines[1])-1) + "\n" // damage in the middle
	torn := `{"seq":5,"start":"2030-01-01T00:00:04Z","end":"2030-01-01T00:00:05Z","usa`
	if err := os.WriteFile(segs[0], []byte(strings.Join(lines, "")+torn), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, usageSeqFile), []byte("6\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sp = testSpool(t, dir, 0)
	if got := seqsOf(spooled(t, sp)); !slices.Equal(got, []uint64{1, 3, 4}) {
		t.Errorf("after repair: %v, want 1 3 4", got)
	}
	if st := sp.stats(); st.DroppedRecords != 2 {
		t.Errorf("dropped %d, want 2 (the damaged line and the torn tail)", st.DroppedRecords)
	}
	repaired, _ := os.ReadFile(segs[0])
	if strings.Contains(string(repaired), "xxx") || !strings.HasSuffix(string(repaired), "\n") || strings.Count(string(repaired), "\n") != 3 {
		t.Errorf("segment not repaired:\n%s", repaired)
	}
	if got := appendN(t, sp, 1); got[0] != 6 {
		t.Errorf("next seq %d, want 6 (5 was reserved by the torn append)", got[0])
	}
	sp.close()
	sp = testSpool(t, dir, 0)
	if got := seqsOf(spooled(t, sp)); !slices.Equal(got, []uint64{1, 3, 4, 6}) {
		t.Errorf("after another reopen: %v", got)
	}
	if st := sp.stats(); st.DroppedRecords != 0 {
		t.Errorf("a repaired spool dropped %d more", st.DroppedRecords)
	}
}

// TestUsageSpoolAcks: duplicates and unknown seqs in an ack are
// harmless; a partly acked segment is rewritten with the rest; segments
// rotate at usageSegRecords, and a fully acked one is deleted.
func TestUsageSpoolAcks(t *testing.T) {
	dir := t.TempDir()
	sp := testSpool(t, dir, 0)
	appendN(t, sp, usageSegRecords+10)
	if f := segFiles(t, dir); len(f) != 2 {
		t.Fatalf("%d segments after %d records, want 2", len(f), usageSegRecords+10)
	}
	n, err := sp.ack([]uint64{2, 2, 4, 99_999, 0})
	if n != 2 || err != nil {
		t.Fatalf("ack: %d, %v", n, err)
	}
	b, err := sp.batch(5, 1<<20, nil)
	if err != nil || !slices.Equal(seqsOf(b), []uint64{1, 3, 5, 6, 7}) {
		t.Fatalf("batch %v, %v", seqsOf(b), err)
	}
	var first []uint64
	for q := uint64(1); q <= usageSegRecords; q++ {
		first = append(first, q)
	}
	if n, err := sp.ack(first); n != usageSegRecords-2 || err != nil {
		t.Fatalf("ack of the first segment: %d, %v", n, err)
	}
	if f := segFiles(t, dir); len(f) != 1 {
		t.Errorf("segments %v, want the second only", f)
	}
	// A batch is bounded by bytes too, but holds at least one record.
	if b, _ := sp.batch(500, 1, nil); len(b) != 1 {
		t.Errorf("a batch of 1 byte holds %d records, want 1", len(b))
	}
	sp.close()
	sp = testSpool(t, dir, 0)
	if st := sp.stats(); st.Records != 10 || st.NextSeq != usageSegRecords+11 {
		t.Errorf("after reopen: %+v", st)
	}
}

func TestUsageSpoolDamagedSeqFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, usageSeqFile), []byte("twelve"), 0o600)
	_, err := openUsageSpool(dir, usageSpoolOptions{})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, usageSeqFile)) {
		t.Fatalf("want an error naming the seq file, got %v", err)
	}
}

// TestUsageSpoolKill kills (SIGKILL) a process appending as fast as it
// can, several times over the same spool: every record whose append had
// returned is there, seqs only grow, and none is used twice.
func TestUsageSpoolKill(t *testing.T) {
	dir := t.TempDir()
	var acked []uint64
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), spoolWriterEnv+"="+dir)
		out, _ := cmd.StdoutPipe()
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReader(out)
		n := 0
		for n < 200+round*50 {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("writer: %v\n%s", err, stderr.String())
			}
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "seq "); ok {
				q, _ := strconv.ParseUint(v, 10, 64)
				acked = append(acked, q)
				n++
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		// What it printed before dying counts too.
		for {
			line, err := rd.ReadString('\n')
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "seq "); ok {
				q, _ := strconv.ParseUint(v, 10, 64)
				acked = append(acked, q)
			}
			if err != nil {
				break
			}
		}
		cmd.Wait()
	}
	sp := testSpool(t, dir, 0)
	recs := spooled(t, sp)
	have := map[uint64]bool{}
	var last uint64
	for _, r := range recs {
		if r.Seq <= last {
			t.Fatalf("seq %d after %d", r.Seq, last)
		}
		last = r.Seq
		have[r.Seq] = true
	}
	for _, q := range acked {
		if !have[q] {
			t.Errorf("seq %d was appended (the append returned) but is not in the spool", q)
		}
	}
	if !slices.IsSorted(acked) {
		t.Errorf("seqs across restarts went backwards: %v", acked)
	}
	for i := 1; i < len(acked); i++ {
		if acked[i] == acked[i-1] {
			t.Errorf("seq %d used twice", acked[i])
		}
	}
	if st := sp.stats(); st.NextSeq <= acked[len(acked)-1] {
		t.Errorf("next seq %d, last used %d", st.NextSeq, acked[len(acked)-1])
	}
	t.Logf("%d records appended by 3 killed writers, %d in the spool, %d dropped (torn) on open", len(acked), len(recs), sp.stats().DroppedRecords)
}
