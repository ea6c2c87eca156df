//go:build !linux

package bind

import (
	"errors"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

var errUnsupported = errors.New("bind: the multipath bind needs Linux")

func supported() error { return errUnsupported }

type rawSockaddr struct{}

func newRawSockaddr(netip.AddrPort) rawSockaddr { return rawSockaddr{} }

type sock struct {
	index int
	name  string
	local netip.AddrPort
	ctr   *uplinkCounters
}

func listenUplink(int, Uplink, uint16, uint32, *uplinkCounters, *slog.Logger) (*sock, uint16, error) {
	return nil, 0, errUnsupported
}

func (s *sock) close() error                           { return nil }
func (s *sock) setMark(uint32) error                   { return errUnsupported }
func (s *sock) send([][]byte, *route) error            { return errUnsupported }
func (s *sock) sendProbe([]byte, netip.AddrPort) error { return errUnsupported }

type receiver struct{}

func newReceiver(*Bind, *sock) *receiver { return &receiver{} }

func (r *receiver) receive([][]byte, []int, []conn.Endpoint) (int, error) {
	return 0, errUnsupported
}
