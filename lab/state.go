package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// DefaultStateRoot is where instances keep their state unless
// Options.StateRoot says otherwise. It is on tmpfs, so a reboot (which
// also drops every namespace) forgets it.
const DefaultStateRoot = "/run/causeway-lab"

const (
	stateFileName = "state.json"
	stateVersion  = 1
	// staleAge is how old an instance without a readable state file must
	// be before Sweep removes it: younger ones may still be being built.
	staleAge = time.Minute
)

// stateFile is an instance's state.json. It is written before anything is
// created and rewritten after every change, so that whatever exists of an
// instance can always be found and removed.
type stateFile struct {
	Version  int    `json:"version"`
	Instance string `json:"instance"`
	// OwnerPID, if not 0, is the process the instance lives only as long
	// as; OwnerStartTime tells it apart from a later process with its PID.
	OwnerPID       int    `json:"owner_pid"`
	OwnerStartTime uint64 `json:"owner_start_time,omitempty"`
	// Binary is the causeway binary that runs the instance's processes.
	Binary  string    `json:"binary"`
	Created time.Time `json:"created"`
	// Namespaces lists every namespace the instance has or will have.
	Namespaces []string     `json:"namespaces"`
	Processes  []procRecord `json:"processes"`
}

// stale reports whether the instance has an owner that is gone. The owner
// must look gone twice, a moment apart, since a process can look gone
// for an instant while it execs (see procRecord.isOurs).
func (s *stateFile) stale() bool {
	if s.OwnerPID == 0 || pidAlive(s.OwnerPID, s.OwnerStartTime) {
		return false
	}
	time.Sleep(50 * time.Millisecond)
	return !pidAlive(s.OwnerPID, s.OwnerStartTime)
}

func instanceDir(stateRoot, instance string) string { return filepath.Join(stateRoot, instance) }

func loadState(dir string) (*stateFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if err != nil {
		return nil, err
	}
	var s stateFile
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, stateFileName), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%s: state version %d, want %d", filepath.Join(dir, stateFileName), s.Version, stateVersion)
	}
	return &s, nil
}

// saveState replaces dir/state.json atomically.
func saveState(dir string, s *stateFile) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFileName)); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

// instanceNetns returns the namespaces that exist for instance.
func instanceNetns(instance string) ([]string, error) {
	all, err := listNetns()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, name := range all {
		if inst, _, ok := parseNetnsName(name); ok && inst == instance {
			out = append(out, name)
		}
	}
	return out, nil
}

// Remove takes down whatever exists of an instance, with or without a
// readable state file: it stops the processes the state records, ends
// every other process still inside the instance's namespaces, deletes the
// namespaces (and with them every link), and removes the state directory.
// Removing an instance that does not exist is not an error.
func Remove(stateRoot, instance string, log *slog.Logger) error {
	if err := checkInstance(instance); err != nil {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := instanceDir(stateRoot, instance)
	var errs []error
	st, err := loadState(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("lab state unreadable; removing by name", "instance", instance, "err", err)
	}
	if st == nil {
		st = &stateFile{}
	}

	// Stop recorded processes first, all at once: appliances undo their
	// own changes on SIGTERM.
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, p := range st.Processes {
		wg.Go(func() {
			if err := stopProcess(p, stopTimeout); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	names := slices.Clone(st.Namespaces)
	found, err := instanceNetns(instance)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range found {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	// Only names the lab makes: a corrupt state file must not be able to
	// point us at someone else's namespace.
	names = slices.DeleteFunc(names, func(n string) bool {
		inst, _, ok := parseNetnsName(n)
		return !ok || inst != instance
	})

	// Anything still running inside would keep the namespace, and its
	// links, alive after the unmount.
	ids := map[nsID]bool{}
	for _, n := range names {
		if id, _, err := statNsID(netnsPath(n)); err == nil {
			ids[id] = true
		}
	}
	for _, pid := range pidsInNetns(ids) {
		wg.Go(func() {
			if err := stopStray(pid, ids, 2*time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	for _, n := range names {
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if len(names) > 0 || len(st.Processes) > 0 {
		log.Info("lab down", "instance", instance, "namespaces", len(names), "processes", len(st.Processes))
	}
	return errors.Join(errs...)
}

// Sweep removes stale instances: those whose state records an owner
// process that has exited, and those without a readable state file that
// are older than a minute (a crash before the state was written, or a
// state directory removed by hand). It only ever touches namespaces named
// like the lab's (cw-<instance>-<node> with a node of the lab's topology)
// and directories under stateRoot named like an instance. Instances made
// by `causeway lab up` (no owner) and instances whose owner runs are kept.
func Sweep(stateRoot string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := sweeper{stateRoot: stateRoot, minAge: staleAge}
	var errs []error
	ents, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range ents {
		inst := e.Name()
		if !e.IsDir() || !ValidInstance(inst) {
			continue
		}
		stale, why := s.instanceStale(inst)
		if !stale {
			continue
		}
		log.Info("sweeping stale lab instance", "instance", inst, "reason", why)
		if err := Remove(stateRoot, inst, log); err != nil {
			errs = append(errs, err)
		}
	}

	// Namespaces of instances that have no state directory at all.
	all, err := listNetns()
	if err != nil {
		errs = append(errs, err)
	}
	done := map[string]bool{}
	for _, name := range all {
		inst, _, _ := parseNetnsName(name)
		if done[inst] || !s.netnsStale(name) {
			continue
		}
		done[inst] = true
		log.Info("sweeping lab namespaces without state", "instance", inst)
		if err := Remove(stateRoot, inst, log); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sweeper holds Sweep's rules; minAge is how old something without state
// must be to count as stale.
type sweeper struct {
	stateRoot string
	minAge    time.Duration
}

// instanceStale reports whether the instance with a state directory is
// stale, and why.
func (s sweeper) instanceStale(inst string) (bool, string) {
	dir := instanceDir(s.stateRoot, inst)
	st, err := loadState(dir)
	if err == nil {
		if st.stale() {
			return true, fmt.Sprintf("owner process %d has exited", st.OwnerPID)
		}
		return false, ""
	}
	if age, ok := dirAge(dir); ok && age >= s.minAge {
		return true, fmt.Sprintf("no usable state for %v: %v", age.Round(time.Second), err)
	}
	return false, ""
}

// netnsStale reports whether the named namespace is one of the lab's,
// belongs to an instance without a state directory, and is old enough.
func (s sweeper) netnsStale(name string) bool {
	inst, _, ok := parseNetnsName(name)
	if !ok {
		return false
	}
	if _, err := os.Stat(instanceDir(s.stateRoot, inst)); !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	age, err := netnsAge(name)
	return err == nil && age >= s.minAge
}

// dirAge is the age of a state directory: the newest of its own and its
// state file's modification times.
func dirAge(dir string) (time.Duration, bool) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, false
	}
	t := fi.ModTime()
	if sf, err := os.Stat(filepath.Join(dir, stateFileName)); err == nil && sf.ModTime().After(t) {
		t = sf.ModTime()
	}
	return time.Since(t), true
}

// InstanceInfo is an instance that has state under a state root.
type InstanceInfo struct {
	Name string
	// OwnerPID is 0 for a persistent instance.
	OwnerPID int
	// Stale is set when the owner has exited (Sweep removes such ones).
	Stale   bool
	Created time.Time
}

// Instances lists the instances with a readable state file under
// stateRoot, by name.
func Instances(stateRoot string) ([]InstanceInfo, error) {
	ents, err := os.ReadDir(stateRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []InstanceInfo
	for _, e := range ents {
		if !e.IsDir() || !ValidInstance(e.Name()) {
			continue
		}
		st, err := loadState(instanceDir(stateRoot, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, InstanceInfo{Name: e.Name(), OwnerPID: st.OwnerPID, Stale: st.stale(), Created: st.Created})
	}
	return out, nil
}
