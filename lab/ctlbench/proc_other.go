//go:build !linux

package ctlbench

import (
	"errors"
	"time"
)

var errNotLinux = errors.New("the control-plane benchmark reads /proc: it runs on Linux only")

func procCPU(int) (time.Duration, error)          { return 0, errNotLinux }
func procMemory(int) (rss, peak int64, err error) { return 0, 0, errNotLinux }
func raiseFileLimit(uint64) (uint64, error)       { return 0, errNotLinux }
