package trace

import (
	"bufio"
	"io"
	"strconv"
)

// Writer writes a trace. NewWriter writes the first line; metadata may
// follow before or after the header; the header is written before the first
// row if Header was not called. Errors are sticky and returned by Flush.
type Writer struct {
	w      *bufio.Writer
	buf    []byte
	header bool
	err    error
}

// NewWriter starts a trace on w.
func NewWriter(w io.Writer) *Writer {
	tw := &Writer{w: bufio.NewWriterSize(w, 256<<10), buf: make([]byte, 0, 512)}
	tw.Meta(MagicKey, Version)
	return tw
}

// Meta writes a "# key: value" line.
func (w *Writer) Meta(key, value string) {
	b := append(w.buf[:0], "# "...)
	b = append(b, key...)
	b = append(b, ": "...)
	b = append(b, value...)
	b = append(b, '\n')
	w.write(b)
}

// Header writes the column header line.
func (w *Writer) Header() {
	if w.header {
		return
	}
	w.header = true
	w.write(append(append(w.buf[:0], Header...), '\n'))
}

// Row writes one row. For sample events value is the guest instruction
// pointer, written in hex.
func (w *Writer) Row(timeNS int64, node, namespace, vmi string, vcpu int, e Event, value uint64) {
	if !w.header {
		w.Header()
	}
	b := strconv.AppendInt(w.buf[:0], timeNS, 10)
	b = append(b, ',')
	b = append(b, node...)
	b = append(b, ',')
	b = append(b, namespace...)
	b = append(b, ',')
	b = append(b, vmi...)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(vcpu), 10)
	b = append(b, ',')
	b = append(b, e.String()...)
	b = append(b, ',')
	if e.IsSample() {
		if value == 0 {
			b = append(b, '0')
		} else {
			b = append(b, "0x"...)
			b = strconv.AppendUint(b, value, 16)
		}
	} else {
		b = strconv.AppendUint(b, value, 10)
	}
	b = append(b, '\n')
	w.write(b)
}

func (w *Writer) write(b []byte) {
	w.buf = b[:0]
	if w.err != nil {
		return
	}
	_, w.err = w.w.Write(b)
}

// Flush writes buffered data and returns the first error met.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	return w.w.Flush()
}
