package record

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Row is one observation of a trace.
type Row struct {
	// Line is the row's line number in the file.
	Line      int
	TimeNS    int64
	Node      string
	Namespace string
	VMI       string
	VCPU      int
	// Event is the counter name; for a sample row, the sampled counter
	// (without "sample.").
	Event  string
	Sample bool
	// Value is the count, or the sampled guest instruction pointer.
	Value uint64
}

type streamKey struct {
	node, ns, vmi string
	vcpu          int
}

// Reader streams a trace: it never holds more than one line, plus the last
// time of each vCPU (to enforce per-vCPU time order) and interned names.
type Reader struct {
	sc     *bufio.Scanner
	line   int
	meta   []Meta
	last   map[streamKey]int64
	intern map[string]string
}

// maxLine bounds a line: a row is a few dozen bytes, metadata short.
const maxLine = 64 << 10

// NewReader reads the version line, the metadata and the header.
func NewReader(r io.Reader) (*Reader, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	t := &Reader{sc: sc, last: map[streamKey]int64{}, intern: map[string]string{}}
	first := true
	for {
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				return nil, fmt.Errorf("line %d: %w", t.line+1, err)
			}
			return nil, fmt.Errorf("line %d: trace ends before the header line %q", t.line, Header)
		}
		t.line++
		text := strings.TrimSuffix(sc.Text(), "\r")
		if first {
			first = false
			if strings.TrimSpace(strings.TrimPrefix(text, "#")) != Version {
				return nil, fmt.Errorf("line 1: want %q, got %q: not a sidewatch v1 trace", "# "+Version, text)
			}
			continue
		}
		if strings.HasPrefix(text, "#") {
			k, v, ok := strings.Cut(strings.TrimPrefix(text, "#"), ":")
			if !ok {
				return nil, fmt.Errorf("line %d: metadata must be '# key: value'", t.line)
			}
			t.meta = append(t.meta, Meta{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)})
			continue
		}
		if text != Header {
			return nil, fmt.Errorf("line %d: want the header %q, got %q", t.line, Header, text)
		}
		return t, nil
	}
}

// Meta returns the metadata lines.
func (t *Reader) Meta() []Meta { return t.meta }

// Next returns the next row, or io.EOF at the end. Comment lines between
// rows are skipped.
func (t *Reader) Next() (Row, error) {
	for t.sc.Scan() {
		t.line++
		b := bytes.TrimSuffix(t.sc.Bytes(), []byte("\r"))
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		return t.parse(b)
	}
	if err := t.sc.Err(); err != nil {
		return Row{}, fmt.Errorf("line %d: %w", t.line+1, err)
	}
	return Row{}, io.EOF
}

func (t *Reader) str(b []byte) string {
	if s, ok := t.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(t.intern) < 1<<16 {
		t.intern[s] = s
	}
	return s
}

func (t *Reader) parse(b []byte) (Row, error) {
	var f [7][]byte
	n := 0
	for n < 6 {
		i := bytes.IndexByte(b, ',')
		if i < 0 {
			break
		}
		f[n], b = b[:i], b[i+1:]
		n++
	}
	f[n] = b
	if n != 6 || bytes.IndexByte(b, ',') >= 0 {
		return Row{}, t.errf("want 7 comma-separated fields (%s)", Header)
	}
	r := Row{Line: t.line}
	var err error
	if r.TimeNS, err = strconv.ParseInt(string(f[0]), 10, 64); err != nil || r.TimeNS < 0 {
		return Row{}, t.errf("time_ns %q is not a non-negative integer", f[0])
	}
	for i, name := range []string{"node", "namespace", "vmi"} {
		if len(f[1+i]) == 0 {
			return Row{}, t.errf("%s is empty", name)
		}
	}
	r.Node, r.Namespace, r.VMI = t.str(f[1]), t.str(f[2]), t.str(f[3])
	vcpu, err := strconv.Atoi(string(f[4]))
	if err != nil || vcpu < 0 {
		return Row{}, t.errf("vcpu %q is not a non-negative integer", f[4])
	}
	r.VCPU = vcpu
	ev := string(f[5])
	if s, ok := strings.CutPrefix(ev, SamplePrefix); ok {
		r.Sample, ev = true, s
	}
	if !IsCounterEvent(ev) {
		return Row{}, t.errf("unknown event %q (counters: llc_references, llc_misses, l1d_misses, bus_locks, split_locks, instructions, cycles; samples: sample.<counter>)", f[5])
	}
	r.Event = t.str([]byte(ev))
	if r.Sample {
		v := string(f[6])
		switch {
		case v == "0":
		case strings.HasPrefix(v, "0x"):
			if r.Value, err = strconv.ParseUint(v[2:], 16, 64); err != nil {
				return Row{}, t.errf("sample value %q is not a hex address", v)
			}
		default:
			return Row{}, t.errf("sample value %q: want a hex address 0x... or 0", v)
		}
	} else if r.Value, err = strconv.ParseUint(string(f[6]), 10, 64); err != nil {
		return Row{}, t.errf("counter value %q is not a non-negative integer", f[6])
	}
	k := streamKey{r.Node, r.Namespace, r.VMI, r.VCPU}
	if last, ok := t.last[k]; ok && r.TimeNS < last {
		return Row{}, t.errf("time %d goes back from %d for %s/%s/%s vcpu %d (rows must not go back in time per vcpu)", r.TimeNS, last, r.Node, r.Namespace, r.VMI, r.VCPU)
	}
	t.last[k] = r.TimeNS
	return r, nil
}

// ErrTrace wraps every malformed-input error.
var ErrTrace = errors.New("malformed trace")

func (t *Reader) errf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s: %w", t.line, fmt.Sprintf(format, args...), ErrTrace)
}
