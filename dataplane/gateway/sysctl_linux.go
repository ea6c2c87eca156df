package gateway

import (
	"fmt"
	"os"
	"strings"
)

// sysctl is one setting under /proc/sys/net, opened in the gateway's
// namespace. The file stays open until restore: a /proc/sys/net file acts
// on the namespace it was opened in, whatever thread later writes to it.
type sysctl struct {
	key  string // e.g. "net/ipv4/fib_multipath_hash_policy"
	f    *os.File
	prev string
}

func openSysctl(key string) (*sysctl, error) {
	f, err := os.OpenFile("/proc/sys/"+key, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening sysctl %s: %w", key, err)
	}
	b := make([]byte, 64)
	n, err := f.ReadAt(b, 0)
	if n == 0 && err != nil {
		f.Close()
		return nil, fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return &sysctl{key: key, f: f, prev: strings.TrimSpace(string(b[:n]))}, nil
}

func (s *sysctl) write(v string) error {
	if _, err := s.f.WriteAt([]byte(v+"\n"), 0); err != nil {
		return fmt.Errorf("setting sysctl %s to %s: %w", s.key, v, err)
	}
	return nil
}

// set writes v and returns the undo that writes the previous value back
// and closes the file. If the value is v already, nothing is written and
// the undo only closes.
func (s *sysctl) set(v string) (func() error, error) {
	if s.prev == v {
		return s.f.Close, nil
	}
	if err := s.write(v); err != nil {
		s.f.Close()
		return nil, err
	}
	return func() error {
		err := s.write(s.prev)
		s.f.Close()
		if err != nil {
			return fmt.Errorf("restoring: %w", err)
		}
		return nil
	}, nil
}

// setSysctl opens key and sets it to v; see sysctl.set.
func setSysctl(key, v string) (func() error, error) {
	s, err := openSysctl(key)
	if err != nil {
		return nil, err
	}
	return s.set(v)
}
