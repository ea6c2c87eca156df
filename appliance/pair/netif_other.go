//go:build !linux

package pair

import (
	"errors"
	"net"
	"net/netip"
)

var errPlatform = errors.New("pair: PAIR mode needs Linux")

func openLANLink(string, netip.Prefix) (lanLink, error) { return nil, errPlatform }

func listenPinned(string, netip.AddrPort) (*net.UDPConn, error) { return nil, errPlatform }
