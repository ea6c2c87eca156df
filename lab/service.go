package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// MaxServiceBytes bounds what /bytes?n=N sends.
const MaxServiceBytes = 1 << 30

// ServiceHandler is the lab's test web server for the host called name:
//
//	GET /          a short text page naming the host and the client
//	GET /bytes?n=N N bytes (0 <= N <= MaxServiceBytes), for transfer tests
//	GET /healthz   "ok"
func ServiceHandler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from %s, a backend in the Causeway lab.\nYou are %s.\n", name, r.RemoteAddr)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > MaxServiceBytes {
			http.Error(w, fmt.Sprintf("want n=0..%d", MaxServiceBytes), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.CopyN(w, &patternReader{}, n)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	return mux
}

// patternBlock holds the pattern patternReader repeats.
var patternBlock = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}()

// patternReader yields the bytes 0, 1, ..., 255, 0, 1, ... without end, so
// that a receiver can check what arrived (byte i of the stream is byte(i)).
type patternReader struct{ off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		start := int(p.off % 256)
		c := copy(b[n:], patternBlock[start:])
		n += c
		p.off += int64(c)
	}
	return n, nil
}

// Serve runs ServiceHandler(name) on listen until ctx is done, then shuts
// down gracefully. It logs requests to log.
func Serve(ctx context.Context, listen, name string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	h := ServiceHandler(name)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.Info("request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "listen", listen, "name", name)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	log.Info("stopped", "name", name)
	return err
}

// ServeUDPEcho answers every UDP datagram on listen with the same bytes
// until ctx is done.
func ServeUDPEcho(ctx context.Context, listen string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log.Info("echoing UDP", "listen", listen)
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		c.WriteTo(buf[:n], from)
	}
}
