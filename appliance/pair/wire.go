package pair

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire form of a heartbeat, version 1. All integers are big-endian.
//
//	offset size field
//	     0    4 magic: 0xC6 "CWH" (probes start with 0xC5, WireGuard with 1-4)
//	     4    1 version: 1
//	     5    1 channel it was sent on: 1 LAN, 2 WAN
//	     6    1 role: 1 standby, 2 active, 3 stopped
//	     7    1 flags: bit 0 drained, bit 1 LAN down; other bits zero
//	     8    1 reason of the sender's current term (see Reason)
//	     9    1 name length n, 1 to MaxNameLen
//	    10    2 priority
//	    12    8 term
//	    20    8 boot: the sender's incarnation, fixed from start to stop
//	    28    8 sequence number, one per heartbeat round, from 1
//	    36    n name
//	  36+n   16 MAC: HMAC-SHA256(heartbeat key, bytes 0..36+n), first 16 bytes
//
// The channel is covered by the MAC, so a heartbeat captured on one channel
// cannot be replayed on the other. Sequence numbers are checked per channel
// (the two channels reorder against each other).
const (
	wireVersion = 1
	headerLen   = 36
	macLen      = 16
	minWireLen  = headerLen + 1 + macLen
	maxWireLen  = headerLen + MaxNameLen + macLen

	offVersion = 4
	offChannel = 5
	offRole    = 6
	offFlags   = 7
	offReason  = 8
	offNameLen = 9
	offPrio    = 10
	offTerm    = 12
	offBoot    = 20
	offSeq     = 28
	offName    = headerLen

	flagDrained = 1 << 0
	flagLANDown = 1 << 1
	flagsKnown  = flagDrained | flagLANDown
)

var wireMagic = [4]byte{0xC6, 'C', 'W', 'H'}

// heartbeat is the content of one heartbeat datagram.
type heartbeat struct {
	Channel  Channel
	Role     Role
	Drained  bool
	LANDown  bool
	Reason   Reason
	Priority uint16
	Term     uint64
	Boot     uint64
	Seq      uint64
	Name     string
}

// Errors wrapped by the *wireError that parseHeartbeat returns; the
// receive path counts errBadMAC separately from the others.
var (
	errNotHeartbeat = errors.New("not a heartbeat")
	errLength       = errors.New("bad length")
	errVersion      = errors.New("unsupported version")
	errField        = errors.New("invalid field")
	errBadMAC       = errors.New("bad MAC")
)

// wireError says why a datagram was refused and names the field at fault.
type wireError struct {
	Len   int
	Field string
	Err   error
}

func (e *wireError) Error() string {
	return fmt.Sprintf("heartbeat (%d bytes): %s: %v", e.Len, e.Field, e.Err)
}

func (e *wireError) Unwrap() error { return e.Err }

// macKey is the heartbeat MAC key, derived from Config.Key.
type macKey [32]byte

// deriveKey separates the keys of the heartbeat and of memberlist's
// encryption, both derived from the one configured secret.
func deriveKey(secret []byte, purpose string) [32]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("causeway pair " + purpose))
	return [32]byte(m.Sum(nil))
}

func (k *macKey) sum(dst, msg []byte) {
	m := hmac.New(sha256.New, k[:])
	m.Write(msg)
	var full [sha256.Size]byte
	copy(dst, m.Sum(full[:0])[:macLen])
}

// appendHeartbeat appends the wire form of h, authenticated with k, to dst.
// h must be valid (a name of 1 to MaxNameLen bytes, a known channel, role
// and reason); the member only marshals what it built itself.
func appendHeartbeat(dst []byte, h *heartbeat, k *macKey) []byte {
	n := len(dst)
	size := headerLen + len(h.Name) + macLen
	dst = append(dst, make([]byte, size)...)
	b := dst[n:]
	copy(b, wireMagic[:])
	b[offVersion] = wireVersion
	b[offChannel] = byte(h.Channel)
	b[offRole] = byte(h.Role)
	if h.Drained {
		b[offFlags] |= flagDrained
	}
	if h.LANDown {
		b[offFlags] |= flagLANDown
	}
	b[offReason] = byte(h.Reason)
	b[offNameLen] = byte(len(h.Name))
	binary.BigEndian.PutUint16(b[offPrio:], h.Priority)
	binary.BigEndian.PutUint64(b[offTerm:], h.Term)
	binary.BigEndian.PutUint64(b[offBoot:], h.Boot)
	binary.BigEndian.PutUint64(b[offSeq:], h.Seq)
	copy(b[offName:], h.Name)
	k.sum(b[size-macLen:], b[:size-macLen])
	return dst
}

// parseHeartbeat checks that b is exactly one well-formed version 1
// heartbeat authenticated by k and returns its content. Every refusal is a
// *wireError. The MAC is checked before any field is interpreted beyond the
// length, so that a forged datagram is counted as a bad MAC whatever it
// claims.
func parseHeartbeat(b []byte, k *macKey) (heartbeat, error) {
	fail := func(field string, err error) (heartbeat, error) {
		return heartbeat{}, &wireError{Len: len(b), Field: field, Err: err}
	}
	if len(b) < len(wireMagic) || [4]byte(b[:4]) != wireMagic {
		return fail("magic", errNotHeartbeat)
	}
	if len(b) <= offVersion {
		return fail("length", errLength)
	}
	if b[offVersion] != wireVersion {
		return fail("version", errVersion)
	}
	if len(b) < minWireLen || len(b) > maxWireLen {
		return fail("length", errLength)
	}
	n := int(b[offNameLen])
	if n < 1 || n > MaxNameLen || len(b) != headerLen+n+macLen {
		return fail("name length", errLength)
	}
	var want [macLen]byte
	k.sum(want[:], b[:headerLen+n])
	if !hmac.Equal(want[:], b[headerLen+n:]) {
		return fail("mac", errBadMAC)
	}
	h := heartbeat{
		Channel:  Channel(b[offChannel]),
		Role:     Role(b[offRole]),
		Drained:  b[offFlags]&flagDrained != 0,
		LANDown:  b[offFlags]&flagLANDown != 0,
		Reason:   Reason(b[offReason]),
		Priority: binary.BigEndian.Uint16(b[offPrio:]),
		Term:     binary.BigEndian.Uint64(b[offTerm:]),
		Boot:     binary.BigEndian.Uint64(b[offBoot:]),
		Seq:      binary.BigEndian.Uint64(b[offSeq:]),
		Name:     string(b[offName : offName+n]),
	}
	switch {
	case h.Channel != ChannelLAN && h.Channel != ChannelWAN:
		return fail("channel", errField)
	case h.Role != RoleStandby && h.Role != RoleActive && h.Role != RoleStopped:
		return fail("role", errField)
	case b[offFlags]&^flagsKnown != 0:
		return fail("flags", errField)
	case !h.Reason.valid():
		return fail("reason", errField)
	case !validName(h.Name):
		return fail("name", errField)
	}
	return h, nil
}
