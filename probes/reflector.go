package probes

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrNotRequest is returned by Reflect for a valid probe that is a reply.
// Reflecting replies would let two reflectors bounce a packet forever.
var ErrNotRequest = errors.New("probes: not a request")

// A Reflector answers probe requests. It keeps no per-sender state: the reply
// is the request with its kind changed and the MAC recomputed with the key
// that authenticated the request, so the sender's sequence number, path id
// and timestamp come back unchanged. It counts what it refuses. Its Handle
// method is the whole receive path of the bind: it answers requests and
// passes verified replies on.
//
// A Reflector is safe for concurrent use. The zero value is not usable; use
// NewReflector.
type Reflector struct {
	keys *Keyring

	reflected  atomic.Uint64
	replies    atomic.Uint64
	badMAC     atomic.Uint64
	unknownKey atomic.Uint64
	malformed  atomic.Uint64
	notRequest atomic.Uint64
}

// ReflectorCounters are the counts of a Reflector since it was created.
type ReflectorCounters struct {
	Reflected  uint64 // requests answered
	Replies    uint64 // valid replies Handle returned
	BadMAC     uint64 // dropped: the MAC did not verify
	UnknownKey uint64 // dropped: the key id is not in the keyring
	Malformed  uint64 // dropped: not a well-formed version 1 probe
	NotRequest uint64 // dropped: a valid reply passed to Reflect
}

// NewReflector returns a reflector that verifies and signs with keys.
func NewReflector(keys *Keyring) *Reflector {
	return &Reflector{keys: keys}
}

// Reflect returns the reply to the request req, in a new slice; req is not
// modified. A request that does not verify is refused with the error of
// Parse, a reply with ErrNotRequest; both are counted, and the caller drops
// the datagram.
func (r *Reflector) Reflect(req []byte) ([]byte, error) {
	rep, p, err := r.handle(req)
	if err == nil && rep == nil {
		r.notRequest.Add(1)
		return nil, fmt.Errorf("%w (a %v for path %d)", ErrNotRequest, p.Kind, p.Path)
	}
	return rep, err
}

// Handle is the receive path of a datagram for which IsProbe is true. It
// verifies b once. For a request it returns the reply to send back, on the
// socket it came in on, to the address it came from; for a reply it returns
// the verified packet, for Tracker.HandleReply, and a nil reply. Refusals
// are counted as in Reflect.
func (r *Reflector) Handle(b []byte) (reply []byte, pkt Packet, err error) {
	reply, pkt, err = r.handle(b)
	if err == nil && reply == nil {
		r.replies.Add(1)
	}
	return reply, pkt, err
}

// handle is Handle without counting replies.
func (r *Reflector) handle(b []byte) (reply []byte, pkt Packet, err error) {
	p, k, err := open(b, r.keys)
	switch {
	case errors.Is(err, ErrBadMAC):
		r.badMAC.Add(1)
		return nil, Packet{}, err
	case errors.Is(err, ErrUnknownKey):
		r.unknownKey.Add(1)
		return nil, Packet{}, err
	case err != nil:
		r.malformed.Add(1)
		return nil, Packet{}, err
	case p.Kind == KindReply:
		return nil, p, nil
	}
	r.reflected.Add(1)
	return appendPacket(make([]byte, 0, Size), p.Reply(), k), p, nil
}

// Counters returns the reflector's counts.
func (r *Reflector) Counters() ReflectorCounters {
	return ReflectorCounters{
		Reflected:  r.reflected.Load(),
		Replies:    r.replies.Load(),
		BadMAC:     r.badMAC.Load(),
		UnknownKey: r.unknownKey.Load(),
		Malformed:  r.malformed.Load(),
		NotRequest: r.notRequest.Load(),
	}
}
