package demo

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

// The recorded attack: tracegen simulates node-1 with a cache covert
// channel that starts 8 s in, between a sender (the protected VMI, with a
// trojan leaking data) and a receiver, next to a busy database. The
// simulated VMIs are then renamed to the demo's. The channel is strong
// enough for the example policy's samplePeriod (10000 LLC misses): each
// 50 ms bit gives the receiver about ten samples or more (the detectors'
// grid in docs/detection-accuracy.md shows what weaker channels need).
const (
	attackOnset    = 8 * time.Second
	attackDuration = 100 * time.Second
	attackPeriod   = 50 * time.Millisecond
)

// renames maps tracegen's VMI names to the demo's.
var renames = map[string]string{
	"tenant-a/exfil-src":  Victim.String(),
	"tenant-z/spy-sink":   Attacker.String(),
	"tenant-b/database-0": Bystander.String(),
}

// WriteAttackTrace writes the recorded attack the demo's agent replays.
func WriteAttackTrace(path string) error {
	var buf bytes.Buffer
	sc := tracegen.Scenario{
		Name: "demo-cache-covert", Seed: 7, Node: AttackedNode,
		Duration: attackDuration, Interval: 100 * time.Millisecond,
		SamplePeriod: 10000, LockSamplePeriod: 10000,
		VMIs:   []tracegen.VMI{{Namespace: "tenant-b", Name: "database-0", VCPUs: 2, Kind: tracegen.Kind("database")}},
		Attack: &tracegen.Attack{Kind: tracegen.CacheCovert, Period: attackPeriod, Coding: tracegen.NRZ, Duty: 0.5, TxDuty: 1, Rate: 2e7, Onset: attackOnset, Protect: "sender"},
	}
	if _, err := tracegen.Generate(&buf, sc); err != nil {
		return fmt.Errorf("generate the attack trace: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := rename(&buf, w); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rename rewrites namespace/name pairs in rows and metadata.
func rename(src *bytes.Buffer, w *bufio.Writer) error {
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			for from, to := range renames {
				line = strings.ReplaceAll(line, from, to)
			}
		} else if f := strings.SplitN(line, ",", 5); len(f) == 5 {
			if to, ok := renames[f[2]+"/"+f[3]]; ok {
				ns, name, _ := strings.Cut(to, "/")
				f[2], f[3] = ns, name
				line = strings.Join(f, ",")
			}
		}
		if _, err := w.WriteString(line + "\n"); err != nil {
			return err
		}
	}
	return sc.Err()
}
