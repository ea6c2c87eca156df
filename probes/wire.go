package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire form of a probe, version 1. All integers are big-endian.
//
//	offset size field
//	     0    1 type: 0xC5 (WireGuard uses 1 to 4)
//	     1    3 magic: "CWP" (WireGuard has three zero bytes here)
//	     4    1 version: 1
//	     5    1 kind: 1 request, 2 reply
//	     6    2 reserved: zero
//	     8    4 key id
//	    12    4 path id of the sender
//	    16    8 sequence number
//	    24    8 send timestamp, nanoseconds on the sender's clock
//	    32   16 MAC: HMAC-SHA256(key, bytes 0..31), first 16 bytes
//
// WireGuard messages start with a little-endian uint32 type of 1 to 4, so
// their first four bytes are {1..4, 0, 0, 0}; a probe differs from every one
// of them in all four bytes. The type byte 0xC5 is also outside the ranges
// RFC 7983 assigns to STUN, ZRTP, DTLS, TURN channels and RTP/RTCP.
const (
	// Size is the length of every version 1 probe.
	Size = 48
	// Version is the wire version this package writes and reads.
	Version = 1

	typeByte   = 0xC5
	headerLen  = 32 // bytes covered by the MAC
	macLen     = Size - headerLen
	offVersion = 4
	offKind    = 5
	offRsvd    = 6
	offKeyID   = 8
	offPathID  = 12
	offSeq     = 16
	offTime    = 24
	offMAC     = headerLen
)

// magic is the first four bytes of every probe, of any version.
var magic = [4]byte{typeByte, 'C', 'W', 'P'}

// Kind says whether a probe is a request or a reply.
type Kind uint8

// The kinds of probe.
const (
	// KindRequest asks the far end to reflect the probe.
	KindRequest Kind = 1
	// KindReply is a reflected request.
	KindReply Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindReply:
		return "reply"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k == KindRequest || k == KindReply }

// PathID names a path on the appliance that sends the request. The reflector
// echoes it, so the sender can find the path a reply belongs to without
// relying on the reply's addresses. Zero means "no path".
type PathID uint32

// NoPath is the zero PathID.
const NoPath PathID = 0

// Packet is the content of a probe.
type Packet struct {
	Kind Kind
	// KeyID names the key that authenticates the packet. Marshal writes the
	// id of the key it uses; Parse reports the id it verified.
	KeyID KeyID
	// Path is the sender's path; a reply carries the request's value.
	Path PathID
	// Seq is the sender's sequence number on Path; a reply carries the
	// request's value.
	Seq uint64
	// Timestamp is when the request was sent, in nanoseconds on the sender's
	// own clock. It is opaque to the reflector, which echoes it unchanged.
	Timestamp uint64
}

// Reply returns the reply to p: the same packet with Kind set to KindReply.
func (p Packet) Reply() Packet {
	p.Kind = KindReply
	return p
}

// Errors wrapped by the *ParseError that Parse returns, and by Marshal.
var (
	ErrNotProbe   = errors.New("not a probe")
	ErrTruncated  = errors.New("truncated")
	ErrTooLong    = errors.New("too long")
	ErrVersion    = errors.New("unsupported version")
	ErrKind       = errors.New("invalid kind")
	ErrReserved   = errors.New("reserved bits set")
	ErrUnknownKey = errors.New("unknown key")
	ErrBadMAC     = errors.New("bad MAC")
	ErrNoKey      = errors.New("no current key")
)

// ParseError says why a datagram was refused. Err is one of the Err*
// variables, so callers can count refusals with errors.Is.
type ParseError struct {
	Len    int    // length of the datagram
	Field  string // the field at fault, e.g. "version"
	Offset int    // the offset of that field
	Err    error
	Detail string // e.g. "got 2, want 1"; may be empty
}

func (e *ParseError) Error() string {
	s := fmt.Sprintf("probe packet (%d bytes): %s at offset %d: %v", e.Len, e.Field, e.Offset, e.Err)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

func (e *ParseError) Unwrap() error { return e.Err }

// IsProbe reports whether b starts like a probe of any version. It looks at
// the first four bytes only and is false for every WireGuard message, so the
// receive path can use it to divert probes before WireGuard sees them. A
// datagram for which IsProbe is true still has to pass Parse.
func IsProbe(b []byte) bool {
	return len(b) >= len(magic) && [4]byte(b[:4]) == magic
}

// Marshal appends the wire form of p, authenticated with the current key of
// keys, to dst and returns the extended slice. p.KeyID is ignored: the id of
// the key used is written. It fails only for an invalid p.Kind or a keyring
// without a current key.
func Marshal(dst []byte, p Packet, keys *Keyring) ([]byte, error) {
	if !p.Kind.valid() {
		return dst, fmt.Errorf("probes: marshal: %w %d", ErrKind, uint8(p.Kind))
	}
	k := keys.current()
	if k == nil {
		return dst, fmt.Errorf("probes: marshal: %w", ErrNoKey)
	}
	p.KeyID = k.id
	return appendPacket(dst, p, k), nil
}

// appendPacket writes p, which must have a valid kind and k's id.
func appendPacket(dst []byte, p Packet, k *macKey) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, Size)...)
	b := dst[n : n+Size]
	copy(b, magic[:])
	b[offVersion] = Version
	b[offKind] = byte(p.Kind)
	// b[offRsvd:offKeyID] stays zero.
	binary.BigEndian.PutUint32(b[offKeyID:], uint32(p.KeyID))
	binary.BigEndian.PutUint32(b[offPathID:], uint32(p.Path))
	binary.BigEndian.PutUint64(b[offSeq:], p.Seq)
	binary.BigEndian.PutUint64(b[offTime:], p.Timestamp)
	k.sum(b[offMAC:], b[:headerLen])
	return dst
}

// Parse checks that b is exactly one well-formed version 1 probe
// authenticated by one of the keys in keys, and returns its content. Every
// refusal is a *ParseError.
func Parse(b []byte, keys *Keyring) (Packet, error) {
	p, _, err := open(b, keys)
	return p, err
}

// open is Parse that also returns the key that verified the packet.
func open(b []byte, keys *Keyring) (Packet, *macKey, error) {
	p, err := parseHeader(b)
	if err != nil {
		return Packet{}, nil, err
	}
	k := keys.lookup(p.KeyID)
	if k == nil {
		return Packet{}, nil, &ParseError{Len: len(b), Field: "key id", Offset: offKeyID, Err: ErrUnknownKey,
			Detail: fmt.Sprintf("key %d", p.KeyID)}
	}
	if !k.verify(b[offMAC:Size], b[:headerLen]) {
		return Packet{}, nil, &ParseError{Len: len(b), Field: "mac", Offset: offMAC, Err: ErrBadMAC,
			Detail: fmt.Sprintf("key %d", p.KeyID)}
	}
	return p, k, nil
}

// parseHeader does every check of Parse except the MAC.
func parseHeader(b []byte) (Packet, error) {
	for i := 0; i < len(magic) && i < len(b); i++ {
		if b[i] != magic[i] {
			return Packet{}, &ParseError{Len: len(b), Field: "magic", Offset: 0, Err: ErrNotProbe}
		}
	}
	switch {
	case len(b) < Size:
		// Report the version first when it is there: a future version may
		// well be of another length.
		if len(b) > offVersion && b[offVersion] != Version {
			return Packet{}, versionError(b)
		}
		return Packet{}, &ParseError{Len: len(b), Field: "length", Offset: len(b), Err: ErrTruncated,
			Detail: fmt.Sprintf("want %d bytes", Size)}
	case b[offVersion] != Version:
		return Packet{}, versionError(b)
	case len(b) > Size:
		return Packet{}, &ParseError{Len: len(b), Field: "length", Offset: Size, Err: ErrTooLong,
			Detail: fmt.Sprintf("want %d bytes", Size)}
	}
	p := Packet{
		Kind:      Kind(b[offKind]),
		KeyID:     KeyID(binary.BigEndian.Uint32(b[offKeyID:])),
		Path:      PathID(binary.BigEndian.Uint32(b[offPathID:])),
		Seq:       binary.BigEndian.Uint64(b[offSeq:]),
		Timestamp: binary.BigEndian.Uint64(b[offTime:]),
	}
	if !p.Kind.valid() {
		return Packet{}, &ParseError{Len: len(b), Field: "kind", Offset: offKind, Err: ErrKind,
			Detail: fmt.Sprintf("got %d, want 1 or 2", b[offKind])}
	}
	if r := binary.BigEndian.Uint16(b[offRsvd:]); r != 0 {
		return Packet{}, &ParseError{Len: len(b), Field: "reserved", Offset: offRsvd, Err: ErrReserved,
			Detail: fmt.Sprintf("got %#04x", r)}
	}
	return p, nil
}

func versionError(b []byte) error {
	return &ParseError{Len: len(b), Field: "version", Offset: offVersion, Err: ErrVersion,
		Detail: fmt.Sprintf("got %d, want %d", b[offVersion], Version)}
}
