package trace

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Magic is the metadata key of the first line; its value is the version.
const (
	MagicKey = "sidewatch-trace"
	Version  = "v1"
	// Header is the column header line that precedes the rows.
	Header = "time_ns,node,namespace,vmi,vcpu,event,value"
)

// MaxLineBytes bounds one line. Longer lines are an error, so a corrupt or
// hostile file cannot make the reader grow without limit.
const MaxLineBytes = 64 << 10

const defaultBufferBytes = 256 << 10

// MaxVCPU is the largest vCPU number a row may carry.
const MaxVCPU = 1<<16 - 1

// Kind says what Next found.
type Kind uint8

// Kinds of records.
const (
	KindRow Kind = iota + 1
	// KindMeta is a "# key: value" line, before or after the header.
	KindMeta
)

// Row is one observation. Its byte slices alias the Reader's buffer and are
// valid until the next call to Next.
type Row struct {
	// TimeNS is the row's time in nanoseconds.
	TimeNS    int64
	Node      []byte
	Namespace []byte
	VMI       []byte
	VCPU      int32
	Event     Event
	// Value is the count for counter rows and the guest instruction
	// pointer (0 when unknown) for sample rows.
	Value uint64
}

// SyntaxError is bad input, located by line.
type SyntaxError struct {
	Line int64
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Reader streams a trace.
type Reader struct {
	src     io.Reader
	buf     []byte
	r, w    int
	eof     bool
	line    int64
	started bool // magic line seen
	rows    bool // header seen
	row     Row
	key     []byte
	val     []byte
	err     error
}

// NewReader returns a Reader of src. It does its own buffering.
func NewReader(src io.Reader) *Reader {
	return &Reader{src: src, buf: make([]byte, defaultBufferBytes)}
}

// NewContinuationReader reads rows of a trace from the middle: src starts
// at a line boundary after the header, and the first line it holds is line
// firstLine of the file. Used to read several parts of one file at once.
func NewContinuationReader(src io.Reader, firstLine int64, bufferBytes int) *Reader {
	if bufferBytes < MaxLineBytes+1 {
		bufferBytes = MaxLineBytes + 1
	}
	return &Reader{src: src, buf: make([]byte, bufferBytes), line: firstLine - 1, started: true, rows: true}
}

// Line is the number of the line Next returned last (1-based).
func (r *Reader) Line() int64 { return r.line }

// Row is the row Next returned last.
func (r *Reader) Row() *Row { return &r.row }

// Meta is the metadata line Next returned last; both slices alias the
// buffer.
func (r *Reader) Meta() (key, value []byte) { return r.key, r.val }

// HeaderSeen reports whether the column header line has been read.
func (r *Reader) HeaderSeen() bool { return r.rows }

// Next reads the next row or metadata line. It returns io.EOF at the end of
// a well-formed trace and a *SyntaxError (or the source's error) otherwise;
// after an error every call returns the same error.
func (r *Reader) Next() (Kind, error) {
	if r.err != nil {
		return 0, r.err
	}
	for {
		line, err := r.readLine()
		if err != nil {
			if err == io.EOF {
				switch {
				case !r.started:
					err = &SyntaxError{Line: r.line + 1, Msg: "empty trace: the first line must be \"# sidewatch-trace: v1\""}
				case !r.rows:
					err = &SyntaxError{Line: r.line + 1, Msg: "no header line \"" + Header + "\" before the end of the trace"}
				}
			}
			r.err = err
			return 0, err
		}
		if !r.started {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
			k, v, ok := splitMeta(line)
			if !ok || string(k) != MagicKey {
				return 0, r.fail("the first line must be \"# sidewatch-trace: v1\"")
			}
			if string(v) != Version {
				return 0, r.fail(fmt.Sprintf("unsupported trace version %q: this reader knows %s", v, Version))
			}
			r.started = true
			continue
		}
		if len(line) == 0 {
			continue // blank lines are allowed anywhere
		}
		if line[0] == '#' {
			k, v, ok := splitMeta(line)
			if !ok {
				continue // a comment, not "# key: value"
			}
			r.key, r.val = k, v
			return KindMeta, nil
		}
		if !r.rows {
			if string(line) != Header {
				return 0, r.fail(fmt.Sprintf("expected the header line %q before any row", Header))
			}
			r.rows = true
			continue
		}
		if msg := parseRow(line, &r.row); msg != "" {
			return 0, r.fail(msg)
		}
		return KindRow, nil
	}
}

func (r *Reader) fail(msg string) error {
	r.err = &SyntaxError{Line: r.line, Msg: msg}
	return r.err
}

// readLine returns the next line without its terminator ("\n" or "\r\n").
func (r *Reader) readLine() ([]byte, error) {
	for {
		if i := bytes.IndexByte(r.buf[r.r:r.w], '\n'); i >= 0 {
			line := r.buf[r.r : r.r+i]
			r.r += i + 1
			r.line++
			if len(line) > MaxLineBytes {
				return nil, &SyntaxError{Line: r.line, Msg: fmt.Sprintf("line longer than %d bytes", MaxLineBytes)}
			}
			return trimCR(line), nil
		}
		if r.eof {
			if r.r == r.w {
				return nil, io.EOF
			}
			line := r.buf[r.r:r.w]
			r.r = r.w
			r.line++
			return trimCR(line), nil
		}
		if r.w-r.r > MaxLineBytes {
			return nil, &SyntaxError{Line: r.line + 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLineBytes)}
		}
		if r.r > 0 {
			r.w = copy(r.buf, r.buf[r.r:r.w])
			r.r = 0
		}
		for !r.eof && r.w < len(r.buf) {
			n, err := r.src.Read(r.buf[r.w:])
			r.w += n
			if err != nil {
				if errors.Is(err, io.EOF) {
					r.eof = true
					break
				}
				return nil, fmt.Errorf("line %d: read: %w", r.line+1, err)
			}
			if n > 0 {
				break
			}
		}
	}
}

func trimCR(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		return b[:n-1]
	}
	return b
}

// splitMeta splits "# key: value". ok is false for lines that are not of
// that form (comments).
func splitMeta(line []byte) (key, value []byte, ok bool) {
	if len(line) == 0 || line[0] != '#' {
		return nil, nil, false
	}
	s := bytes.TrimLeft(line[1:], " \t")
	i := 0
	for i < len(s) && isKeyByte(s[i]) {
		i++
	}
	if i == 0 || i >= len(s) || s[i] != ':' {
		return nil, nil, false
	}
	return s[:i], bytes.TrimSpace(s[i+1:]), true
}

func isKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// parseRow parses one CSV row into row. It returns "" or the reason the
// row is malformed.
func parseRow(line []byte, row *Row) string {
	var f [7][]byte
	n := 0
	start := 0
	for i := 0; i < len(line); i++ {
		if line[i] == ',' {
			if n == 6 {
				return "too many fields: a row has 7 (" + Header + ")"
			}
			f[n] = line[start:i]
			n++
			start = i + 1
		}
	}
	if n != 6 {
		return fmt.Sprintf("%d fields, want 7 (%s)", n+1, Header)
	}
	f[6] = line[start:]

	t, ok := parseUint(f[0])
	if !ok || t > 1<<63-1 {
		return fmt.Sprintf("time_ns %q is not a non-negative integer", clip(f[0]))
	}
	row.TimeNS = int64(t)
	if msg := checkName("node", f[1]); msg != "" {
		return msg
	}
	if msg := checkName("namespace", f[2]); msg != "" {
		return msg
	}
	if msg := checkName("vmi", f[3]); msg != "" {
		return msg
	}
	row.Node, row.Namespace, row.VMI = f[1], f[2], f[3]
	v, ok := parseUint(f[4])
	if !ok || v > MaxVCPU {
		return fmt.Sprintf("vcpu %q is not an integer between 0 and %d", clip(f[4]), MaxVCPU)
	}
	row.VCPU = int32(v)
	ev, ok := parseEventFast(f[5])
	if !ok {
		return fmt.Sprintf("unknown event %q: want one of llc_references, llc_misses, l1d_misses, bus_locks, split_locks, instructions, cycles, or sample.<one of those>", clip(f[5]))
	}
	row.Event = ev
	if ev.IsSample() {
		ip, ok := parseIP(f[6])
		if !ok {
			return fmt.Sprintf("value %q of a sample row is not a guest instruction pointer in hex (0x...) or 0", clip(f[6]))
		}
		row.Value = ip
	} else {
		c, ok := parseUint(f[6])
		if !ok {
			return fmt.Sprintf("value %q of a counter row is not a non-negative decimal integer", clip(f[6]))
		}
		row.Value = c
	}
	return ""
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

func checkName(field string, b []byte) string {
	if len(b) == 0 {
		return field + " is empty"
	}
	if len(b) > 253 {
		return field + " is longer than 253 bytes"
	}
	for _, c := range b {
		if c == '"' || c < ' ' || c == 0x7f {
			return fmt.Sprintf("%s %q contains a quote or control character (fields are never quoted)", field, clip(b))
		}
	}
	return ""
}

// parseUint parses a decimal uint64 (no sign, no spaces).
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		d := c - '0'
		if d > 9 {
			return 0, false
		}
		if v > (1<<64-1-uint64(d))/10 {
			return 0, false
		}
		v = v*10 + uint64(d)
	}
	return v, true
}

func parseIP(b []byte) (uint64, bool) {
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	if len(b) < 3 || len(b) > 18 || b[0] != '0' || (b[1] != 'x' && b[1] != 'X') {
		return 0, false
	}
	var v uint64
	for _, c := range b[2:] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// parseEventFast is ParseEvent specialised for the hot path.
func parseEventFast(b []byte) (Event, bool) {
	sample := false
	if len(b) > 7 && string(b[:7]) == "sample." {
		sample = true
		b = b[7:]
	}
	var e Event
	switch len(b) {
	case 6:
		if string(b) == "cycles" {
			e = Cycles
		}
	case 9:
		if string(b) == "bus_locks" {
			e = BusLocks
		}
	case 10:
		if string(b) == "llc_misses" {
			e = LLCMisses
		} else if string(b) == "l1d_misses" {
			e = L1DMisses
		}
	case 11:
		if string(b) == "split_locks" {
			e = SplitLocks
		}
	case 12:
		if string(b) == "instructions" {
			e = Instructions
		}
	case 14:
		if string(b) == "llc_references" {
			e = LLCReferences
		}
	}
	if e == EventNone {
		return EventNone, false
	}
	if sample {
		e = e.Sample()
	}
	return e, true
}
