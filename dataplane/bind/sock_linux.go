// The batching and UDP segmentation offload logic in this file follows
// wireguard-go's conn/bind_std.go and conn/gso_linux.go (receive: read
// coalesced datagrams into the tail of the batch and split them forward;
// send: coalesce equal-sized datagrams under one UDP_SEGMENT, retry
// without it on EIO), which carry this notice:
//
// SPDX-License-Identifier: MIT
//
// Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the
// "Software"), to deal in the Software without restriction, including
// without limitation the rights to use, copy, modify, merge, publish,
// distribute, sublicense, and/or sell copies of the Software, and to
// permit persons to whom the Software is furnished to do so, subject to
// the following conditions:
//
// The above copyright notice and this permission notice shall be included
// in all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
// MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
// IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
// CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
// TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
// SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
//
// Unlike bind_std.go, recvmmsg and sendmmsg are called directly (not
// through golang.org/x/net/ipv4, which allocates an address per datagram),
// and GSO gathers the segments with one iovec each instead of copying them
// into one buffer.

package bind

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/causeway-net/causeway/probes"
)

const (
	// socketBufferSize is StdNetBind's: 7 MiB, forced past
	// net.core.[rw]mem_max when the process has CAP_NET_ADMIN.
	socketBufferSize = 7 << 20

	// maxSegments is the kernel's limit of segments per GSO send (and what
	// UDP GRO coalesces at most).
	maxSegments = 64
	// maxIPv4Payload is the largest UDP payload of one (GSO) send.
	maxIPv4Payload = 1<<16 - 1 - 20 - 8

	batch = conn.IdealBatchSize
)

var (
	gsoCmsgSpace = unix.CmsgSpace(2) // UDP_SEGMENT: a uint16
)

// rawSockaddr is the destination of a route, ready for sendmmsg.
type rawSockaddr = unix.RawSockaddrInet4

func newRawSockaddr(ap netip.AddrPort) rawSockaddr {
	sa := rawSockaddr{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	return sa
}

func addrPortFromRaw(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

func supported() error { return nil }

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2); Go lays it
// out as C does on every Linux architecture.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// sock is one uplink's socket.
type sock struct {
	index     int
	name      string
	conn      *net.UDPConn
	rc        syscall.RawConn
	local     netip.AddrPort
	rxOffload bool        // UDP_GRO is on
	txOffload atomic.Bool // UDP_SEGMENT works; cleared on EIO
	ctr       *uplinkCounters
	log       *slog.Logger
	senders   sync.Pool // *sender
}

func listenUplink(index int, u Uplink, port uint16, mark uint32, ctr *uplinkCounters, log *slog.Logger) (*sock, uint16, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			f := int(fd)
			// Up to [rw]mem_max, then beyond it if we may.
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBufferSize)
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBufferSize)
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBufferSize)
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBufferSize)
			if u.Interface != "" {
				if err = unix.SetsockoptString(f, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, u.Interface); err != nil {
					err = fmt.Errorf("SO_BINDTODEVICE %s: %w", u.Interface, err)
					return
				}
			}
			if mark != 0 {
				if err = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
					err = fmt.Errorf("SO_MARK: %w", err)
					return
				}
			}
			// Best effort; read back below.
			_ = unix.SetsockoptInt(f, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
		})
		if cerr != nil {
			return cerr
		}
		return err
	}}
	addr := u.Addr
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
	}
	pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		return nil, 0, err
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, 0, err
	}
	s := &sock{index: index, name: u.Name, conn: uc, rc: rc, ctr: ctr, log: log}
	s.local = uc.LocalAddr().(*net.UDPAddr).AddrPort()
	s.senders.New = func() any { return newSender() }
	_ = rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.txOffload.Store(err == nil)
		v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
		s.rxOffload = err == nil && v == 1
	})
	log.Debug("uplink socket", "uplink", u.Name, "local", s.local, "interface", u.Interface,
		"gso", s.txOffload.Load(), "gro", s.rxOffload)
	return s, s.local.Port(), nil
}

func (s *sock) close() error { return s.conn.Close() }

func (s *sock) setMark(mark uint32) error {
	var serr error
	if err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}

func (s *sock) sendProbe(pkt []byte, dst netip.AddrPort) error {
	if _, err := s.conn.WriteToUDPAddrPort(pkt, dst); err != nil {
		s.ctr.sendErrors.Add(1)
		return err
	}
	s.ctr.probesTx.Add(1)
	return nil
}

// receiver is the state of one uplink's receive function. WireGuard calls
// each receive function from one goroutine, so it needs no lock.
type receiver struct {
	b *Bind
	s *sock

	hs    [batch]mmsghdr
	iovs  [batch]unix.Iovec
	names [batch]unix.RawSockaddrInet6
	oob   [batch][32]byte // room for a UDP_GRO cmsg
	srcs  [batch]netip.AddrPort

	fn           func(fd uintptr) bool // r.recvmmsg, bound once
	start, count int                   // arguments of recvmmsg
	n            int                   // its results
	errno        syscall.Errno
}

func newReceiver(b *Bind, s *sock) *receiver {
	r := &receiver{b: b, s: s}
	r.fn = r.recvmmsg
	return r
}

func (r *receiver) recvmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hs[r.start])), uintptr(r.count), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the socket to become readable
		}
		r.n, r.errno = int(n), e
		return true
	}
}

func (r *receiver) prepare(i int, buf []byte) {
	r.iovs[i].Base = unsafe.SliceData(buf)
	r.iovs[i].SetLen(len(buf))
	h := &r.hs[i].hdr
	*h = unix.Msghdr{
		Name:    (*byte)(unsafe.Pointer(&r.names[i])),
		Namelen: unix.SizeofSockaddrInet6,
		Iov:     &r.iovs[i],
	}
	h.SetIovlen(1)
	if r.s.rxOffload {
		h.Control = &r.oob[i][0]
		h.SetControllen(len(r.oob[i]))
	}
	r.hs[i].n = 0
}

// receive is the conn.ReceiveFunc of the uplink.
func (r *receiver) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	if len(bufs) > batch {
		bufs = bufs[:batch]
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	r.start, r.count = 0, len(bufs)
	if r.s.rxOffload {
		// Coalesced reads land at the tail and are split forward.
		k := max(1, len(bufs)/maxSegments)
		r.start, r.count = len(bufs)-k, k
	}
	for i := r.start; i < r.start+r.count; i++ {
		r.prepare(i, bufs[i])
	}
	if err := r.s.rc.Read(r.fn); err != nil {
		return 0, err // net.ErrClosed after Close
	}
	if r.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", r.errno)
	}
	n := r.n
	if r.s.rxOffload {
		var err error
		if n, err = r.split(bufs, sizes); err != nil {
			return 0, err
		}
	} else {
		for i := range n {
			sizes[i] = int(r.hs[i].n)
			r.srcs[i] = addrPortFromRaw(&r.names[i])
		}
	}
	r.deliver(bufs[:n], sizes, eps)
	return n, nil
}

// split cuts the coalesced datagrams read into bufs[r.start:] into one
// datagram per buffer from bufs[0], and returns how many there are.
func (r *receiver) split(bufs [][]byte, sizes []int) (int, error) {
	out := 0
	for j := range r.n {
		i := r.start + j
		size := int(r.hs[i].n)
		src := addrPortFromRaw(&r.names[i])
		gso := groSize(r.oob[i][:r.hs[i].hdr.Controllen])
		if gso <= 0 || gso >= size {
			gso = size
		}
		if size == 0 {
			gso = 1 // one empty datagram
		}
		for start := 0; start < max(size, 1); start += gso {
			if out > i {
				return 0, errors.New("bind: splitting a coalesced datagram overflowed the batch")
			}
			end := min(start+gso, size)
			sizes[out] = copy(bufs[out], bufs[i][start:end])
			r.srcs[out] = src
			out++
		}
	}
	return out, nil
}

// groSize returns the segment size of a UDP_GRO control message in oob,
// or 0.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4:
				return int(binary.NativeEndian.Uint32(data))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
		}
		oob = rest
	}
	return 0
}

// deliver diverts probes and sets the endpoint of every WireGuard datagram.
func (r *receiver) deliver(bufs [][]byte, sizes []int, eps []conn.Endpoint) {
	s := r.s
	m := r.b.table.Load().byUplink[s.index]
	var (
		last         *Endpoint
		pkts, nbytes uint64
	)
	for i := range bufs {
		size := sizes[i]
		if size == 0 {
			continue
		}
		pkt := bufs[i][:size]
		src := r.srcs[i]
		if probes.IsProbe(pkt) {
			r.b.handleProbe(s, pkt, src)
			sizes[i] = 0
			continue
		}
		pkts++
		nbytes += uint64(size)
		if last != nil && last.route.id.Remote == src {
			eps[i] = last
			continue
		}
		e := m[src]
		if e == nil {
			e = r.b.lookupSlow(s.index, src, pkt)
		}
		eps[i] = e
		last = e
	}
	if pkts > 0 {
		s.ctr.rxPackets.Add(pkts)
		s.ctr.rxBytes.Add(nbytes)
	}
}

// sender is the state of one Send; senders are pooled per socket.
type sender struct {
	hs   [batch]mmsghdr
	iovs [batch]unix.Iovec
	oob  [batch][32]byte // room for a UDP_SEGMENT cmsg

	fn         func(fd uintptr) bool // sd.sendmmsg, bound once
	start, end int                   // arguments of sendmmsg
	n          int                   // its results
	errno      syscall.Errno
}

func newSender() *sender {
	sd := &sender{}
	sd.fn = sd.sendmmsg
	return sd
}

func (sd *sender) sendmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&sd.hs[sd.start])), uintptr(sd.end-sd.start), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for room in the socket buffer
		}
		sd.n, sd.errno = int(n), e
		return true
	}
}

// pack fills sd with one message per datagram, or with GSO one message per
// run of equal-sized datagrams (a shorter one may end a run), and returns
// the number of messages.
func (sd *sender) pack(bufs [][]byte, sa *rawSockaddr, gso bool) int {
	m := -1
	var segSize, segs, total int
	var ended bool
	for i, b := range bufs {
		sd.iovs[i].Base = unsafe.SliceData(b)
		sd.iovs[i].SetLen(len(b))
		if gso && m >= 0 && !ended && len(b) <= segSize && segs < maxSegments && total+len(b) <= maxIPv4Payload {
			segs++
			total += len(b)
			sd.hs[m].hdr.SetIovlen(segs)
			ended = len(b) < segSize
			continue
		}
		if m >= 0 {
			sd.setSegment(m, segs, segSize)
		}
		m++
		h := &sd.hs[m].hdr
		*h = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(sa)),
			Namelen: unix.SizeofSockaddrInet4,
			Iov:     &sd.iovs[i],
		}
		h.SetIovlen(1)
		sd.hs[m].n = 0
		segSize, segs, total, ended = len(b), 1, len(b), false
	}
	sd.setSegment(m, segs, segSize)
	return m + 1
}

// setSegment adds the UDP_SEGMENT control message to message m if it
// carries more than one segment.
func (sd *sender) setSegment(m, segs, size int) {
	if segs < 2 {
		return
	}
	oob := sd.oob[m][:gsoCmsgSpace]
	clear(oob)
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	hdr.Level = unix.SOL_UDP
	hdr.Type = unix.UDP_SEGMENT
	hdr.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	h := &sd.hs[m].hdr
	h.Control = &oob[0]
	h.SetControllen(gsoCmsgSpace)
}

// send sends bufs to r's destination from this socket.
func (s *sock) send(bufs [][]byte, r *route) error {
	if len(bufs) > batch {
		return fmt.Errorf("bind: %d datagrams in one send, at most %d", len(bufs), batch)
	}
	sd := s.senders.Get().(*sender)
	defer s.senders.Put(sd)
	gso := s.txOffload.Load()
	err := sd.sendAll(s.rc, sd.pack(bufs, &r.sa, gso))
	if err != nil && gso && errors.Is(err, unix.EIO) {
		// EIO: the device cannot checksum for GSO. Off for good.
		s.txOffload.Store(false)
		s.log.Warn("UDP GSO disabled", "uplink", s.name, "err", err)
		err = conn.ErrUDPGSODisabled{RetryErr: sd.sendAll(s.rc, sd.pack(bufs, &r.sa, false))}
		if err.(conn.ErrUDPGSODisabled).RetryErr == nil {
			s.count(bufs)
		}
		return err
	}
	if err != nil {
		s.ctr.sendErrors.Add(1)
		return err
	}
	s.count(bufs)
	return nil
}

func (s *sock) count(bufs [][]byte) {
	var n uint64
	for _, b := range bufs {
		n += uint64(len(b))
	}
	s.ctr.txPackets.Add(uint64(len(bufs)))
	s.ctr.txBytes.Add(n)
}

func (sd *sender) sendAll(rc syscall.RawConn, msgs int) error {
	for sd.start, sd.end = 0, msgs; sd.start < sd.end; {
		if err := rc.Write(sd.fn); err != nil {
			return err
		}
		if sd.errno != 0 {
			return os.NewSyscallError("sendmmsg", sd.errno)
		}
		sd.start += sd.n
	}
	return nil
}
