package introspect

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Monitor is QEMU's monitor as introspection uses it. QMPMonitor talks to a
// QMP socket; a recorded Snapshot replays what a monitor said.
type Monitor interface {
	// HMP runs a human monitor command ("info registers -a").
	HMP(ctx context.Context, command string) (string, error)
	// QMP runs a QMP command and returns its "return" value.
	QMP(ctx context.Context, command string, args any) (json.RawMessage, error)
	Close() error
}

// QMPMonitor is a client of QEMU's QMP socket. It serialises commands: QMP
// answers in order on one connection.
type QMPMonitor struct {
	mu      sync.Mutex
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// maxQMPLine bounds one QMP message (info mtree -f of a large machine is
// tens of KiB; registers of 288 vCPUs about a MiB).
const maxQMPLine = 16 << 20

// DialQMP connects to a QMP unix socket and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMPMonitor, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	q := &QMPMonitor{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), timeout: 10 * time.Second}
	if err := q.handshake(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return q, nil
}

func (q *QMPMonitor) handshake(ctx context.Context) error {
	q.setDeadline(ctx)
	line, err := q.readLine()
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	var greet struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(line, &greet) != nil || greet.QMP == nil {
		return fmt.Errorf("not a QMP greeting: %.80q", line)
	}
	_, err = q.QMP(ctx, "qmp_capabilities", nil)
	return err
}

func (q *QMPMonitor) setDeadline(ctx context.Context) {
	dl := time.Now().Add(q.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = q.conn.SetDeadline(dl)
}

func (q *QMPMonitor) readLine() ([]byte, error) {
	var buf []byte
	for {
		chunk, err := q.r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxQMPLine {
			return nil, errors.New("qmp message too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return buf, err
	}
}

// QMP runs one command and returns its "return" value.
func (q *QMPMonitor) QMP(ctx context.Context, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn == nil {
		return nil, errors.New("qmp: closed")
	}
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	q.setDeadline(ctx)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	// Asynchronous events may come before the answer; skip a bounded number.
	for i := 0; i < 1000; i++ {
		line, err := q.readLine()
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: bad answer: %w", command, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", command, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
	return nil, fmt.Errorf("qmp %s: no answer among 1000 events", command)
}

// HMP runs a human monitor command through QMP.
func (q *QMPMonitor) HMP(ctx context.Context, command string) (string, error) {
	raw, err := q.QMP(ctx, "human-monitor-command", map[string]string{"command-line": command})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("hmp %q: %w", command, err)
	}
	return s, nil
}

// Close closes the connection.
func (q *QMPMonitor) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn == nil {
		return nil
	}
	err := q.conn.Close()
	q.conn = nil
	return err
}

// VCPURegisters are the registers of one vCPU that introspection uses.
type VCPURegisters struct {
	// Index is QEMU's cpu index ("CPU#n").
	Index  int    `json:"index"`
	RIP    uint64 `json:"rip"`
	CPL    int    `json:"cpl"`
	Halted bool   `json:"halted"`
	CR3    uint64 `json:"cr3"`
	CR4    uint64 `json:"cr4"`
	EFER   uint64 `json:"efer"`
	// GSBase is the per-CPU area base while the vCPU is in the kernel; a
	// user value while it runs user code (KERNEL_GS_BASE is not exposed).
	GSBase  uint64 `json:"gsBase"`
	IDTBase uint64 `json:"idtBase"`
}

const (
	cr4LA57  = 1 << 12
	eferLMA  = 1 << 10
	maxVCPUs = 4096
)

var (
	regRE  = regexp.MustCompile(`\b(RIP|CPL|HLT|CR3|CR4|EFER)=([0-9a-fA-F]+)\b`)
	segRE  = regexp.MustCompile(`^(GS|IDT)\s*=\s*(?:[0-9a-fA-F]{4} )?\s*([0-9a-fA-F]{8,16})\b`)
	hexVal = func(s string) uint64 { v, _ := strconv.ParseUint(s, 16, 64); return v }
)

// parseRegisters parses `info registers -a`.
func parseRegisters(s string) ([]VCPURegisters, error) {
	var out []VCPURegisters
	var cur *VCPURegisters
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "CPU#"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil || n < 0 || n >= maxVCPUs {
				return nil, fmt.Errorf("info registers: bad vCPU header %q", line)
			}
			out = append(out, VCPURegisters{Index: n})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil {
			continue
		}
		if m := segRE.FindStringSubmatch(line); m != nil {
			// "GS =0000 ffff88801f600000 ..." is selector then base;
			// "IDT=     fffffe0000000000 00000fff" is base then limit.
			if m[1] == "GS" {
				cur.GSBase = hexVal(m[2])
			} else {
				cur.IDTBase = hexVal(m[2])
			}
			continue
		}
		for _, m := range regRE.FindAllStringSubmatch(line, -1) {
			hex := hexVal
			switch m[1] {
			case "RIP":
				cur.RIP = hex(m[2])
			case "CPL":
				cur.CPL = int(hex(m[2]))
			case "HLT":
				cur.Halted = m[2] == "1"
			case "CR3":
				cur.CR3 = hex(m[2])
			case "CR4":
				cur.CR4 = hex(m[2])
			case "EFER":
				cur.EFER = hex(m[2])
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("info registers: no vCPU in the answer")
	}
	// A vCPU still in real mode (not yet started by the guest) has no CR3;
	// at least one must have one.
	for _, r := range out {
		if r.CR3 != 0 {
			return out, nil
		}
	}
	return nil, errors.New("info registers: no vCPU has paging on (CR3 = 0): guest not booted, or an unexpected format")
}

var mtreeRE = regexp.MustCompile(`^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (?:ram|rom|romd)\): (\S+)(?: @([0-9a-f]+))?`)

// parseMtree reads the RAM layout of memory backend `backend` from
// `info mtree -f`: the flat view of address space "memory".
func parseMtree(s, backend string) (RAMLayout, error) {
	var view []string
	lines := strings.Split(s, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "FlatView #") {
			continue
		}
		// A flat view lists the address spaces that share it, then its root.
		j := i + 1
		isMemory := false
		for ; j < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[j]), "AS "); j++ {
			if strings.HasPrefix(strings.TrimSpace(lines[j]), `AS "memory",`) {
				isMemory = true
			}
		}
		if !isMemory {
			continue
		}
		for ; j < len(lines) && !strings.HasPrefix(lines[j], "FlatView #"); j++ {
			view = append(view, lines[j])
		}
		break
	}
	if view == nil {
		return nil, errors.New(`info mtree -f: no flat view of address space "memory"`)
	}
	var layout RAMLayout
	for _, line := range view {
		m := mtreeRE.FindStringSubmatch(line)
		if m == nil || m[3] != backend {
			continue
		}
		start, err1 := strconv.ParseUint(m[1], 16, 64)
		end, err2 := strconv.ParseUint(m[2], 16, 64)
		if err1 != nil || err2 != nil || end < start {
			return nil, fmt.Errorf("info mtree -f: bad range in %q", line)
		}
		// Without "@offset" the region shows the backend from its start.
		var off uint64
		if m[4] != "" {
			if off, err1 = strconv.ParseUint(m[4], 16, 64); err1 != nil {
				return nil, fmt.Errorf("info mtree -f: bad offset in %q", line)
			}
		}
		r := RAMRegion{GPA: start, Size: end - start + 1, Offset: off}
		// Merge pieces that continue the previous one in both spaces
		// (ROM/RAM attribute changes below 1 MiB split the low region).
		if n := len(layout); n > 0 {
			p := &layout[n-1]
			if p.GPA+p.Size == r.GPA && p.Offset+p.Size == r.Offset {
				p.Size += r.Size
				continue
			}
		}
		layout = append(layout, r)
	}
	if len(layout) == 0 {
		return nil, fmt.Errorf("info mtree -f: memory backend %q is not mapped in the guest", backend)
	}
	return layout, layout.Validate(0)
}

// memdev is one entry of query-memdev.
type memdev struct {
	ID   string `json:"id"`
	Size uint64 `json:"size"`
}

func queryMemdevs(ctx context.Context, m Monitor) ([]memdev, error) {
	raw, err := m.QMP(ctx, "query-memdev", nil)
	if err != nil {
		return nil, err
	}
	var devs []memdev
	if err := json.Unmarshal(raw, &devs); err != nil {
		return nil, fmt.Errorf("query-memdev: %w", err)
	}
	return devs, nil
}
