// Package demo runs sidewatch end to end on one machine: a real
// kube-apiserver and etcd (with the garbage collector), the KubeVirt CRDs,
// three nodes, a victim and an attacker VMI co-located on one node, a
// SideChannelPolicy with action Migrate, the real operator and a real node
// agent as separate processes with their own service-account identities
// (the RBAC and admission policy of config/ apply to them), the agent fed
// by a recorded attack trace (replay mode: the machine may lack a PMU), and
// a stand-in for KubeVirt's virt-controller that carries out migrations.
//
// `make demo` and the end-to-end test (test/e2e) both drive it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
	"github.com/sidewatch/sidewatch/internal/manifests"
)

// The demo's cluster.
const (
	Namespace    = "sidewatch-system"
	AttackedNode = "node-1"
)

var (
	// Nodes of the demo cluster; the attack happens on the first.
	Nodes = []string{"node-1", "node-2", "node-3"}
	// Victim is protected by the example policy (namespace payments is
	// labelled tenant=payments, the VMI sidewatch.io/protect=true).
	Victim = types.NamespacedName{Namespace: "payments", Name: "payments-db"}
	// Attacker shares node-1 with the victim.
	Attacker = types.NamespacedName{Namespace: "batch", Name: "render-farm-7"}
	// Bystander is a busy database on node-1 too, neither attacked nor
	// attacking: the detectors must not blame it.
	Bystander = types.NamespacedName{Namespace: "batch", Name: "etl-worker-2"}
)

// Options tune the demo.
type Options struct {
	// Out receives the demo's narration (default os.Stdout).
	Out io.Writer
	// WorkDir keeps binaries, kubeconfigs, logs and the trace (default: a
	// temporary directory removed by Stop).
	WorkDir string
	// ReplaySpeed is the agent's replay pace relative to real time.
	ReplaySpeed float64
}

// Demo is a running demo.
type Demo struct {
	opts       Options
	env        *controlplane.Env
	client     client.Client
	workDir    string
	ownWorkDir bool
	cancel     context.CancelFunc
	procs      []*process
	mgrDone    chan error
	virtLog    *os.File

	// Kubeconfig reaches the cluster as an administrator.
	Kubeconfig string
	// Kubectl is the kubectl binary built with the control plane.
	Kubectl string
	// CLI is the sidewatch CLI binary.
	CLI string
	// OperatorMetrics and AgentMetrics are the host:port of the metrics
	// endpoints.
	OperatorMetrics, AgentMetrics string
	// TracePath is the recorded attack the agent replays.
	TracePath string
}

// Client is an administrator's client of the demo cluster.
func (d *Demo) Client() client.Client { return d.client }

// WorkDir holds the demo's files.
func (d *Demo) WorkDir() string { return d.workDir }

func (d *Demo) say(format string, args ...any) {
	fmt.Fprintf(d.opts.Out, "==> "+format+"\n", args...)
}

// Scheme knows every type the demo touches.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = v1alpha1.AddToScheme(s)
	_ = virtv1.AddToScheme(s)
	return s
}

// Start sets up the cluster and starts the operator, the agent and the
// virt-controller stand-in. Stop it with Stop, also after an error.
func Start(ctx context.Context, opts Options) (d *Demo, err error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.ReplaySpeed <= 0 {
		opts.ReplaySpeed = 1
	}
	d = &Demo{opts: opts, workDir: opts.WorkDir}
	defer func() {
		if err != nil {
			d.Stop()
			d = nil
		}
	}()
	if d.workDir == "" {
		if d.workDir, err = os.MkdirTemp("", "sidewatch-demo-"); err != nil {
			return d, err
		}
		d.ownWorkDir = true
	} else if err = os.MkdirAll(d.workDir, 0o755); err != nil {
		return d, err
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		return d, err
	}

	d.say("building the operator, the node agent and the CLI")
	bins, err := build(ctx, root, filepath.Join(d.workDir, "bin"))
	if err != nil {
		return d, err
	}
	d.CLI = bins["sidewatch"]

	d.say("starting a local control plane (kube-apiserver, etcd, the garbage collector); the first run builds them, about 7 minutes")
	if d.env, err = controlplane.Start(ctx, controlplane.Options{}); err != nil {
		return d, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if err = d.env.StartGarbageCollector(runCtx); err != nil {
		return d, err
	}
	d.Kubectl = d.env.Kubectl()
	d.Kubeconfig = filepath.Join(d.workDir, "kubeconfig")
	if err = d.env.Kubeconfig(d.Kubeconfig); err != nil {
		return d, err
	}
	if d.client, err = client.New(d.env.Config, client.Options{Scheme: Scheme()}); err != nil {
		return d, err
	}

	d.say("installing sidewatch from config/default (CRDs, RBAC, admission policy); the KubeVirt CRDs are already there")
	objs, err := manifests.Build(filepath.Join(root, "config", "default"))
	if err != nil {
		return d, err
	}
	// No kubelet runs here: the operator and the agent run as local
	// processes, so their Deployment and DaemonSet are left out.
	if err = manifests.Apply(ctx, d.client, objs, manifests.Options{FieldOwner: "sidewatch-demo", Skip: func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "Deployment" || o.GetKind() == "DaemonSet"
	}}); err != nil {
		return d, err
	}

	d.say("creating nodes %s and, on %s, VMIs %s (protected), %s (the attacker) and %s (a busy bystander)", strings.Join(Nodes, ", "), AttackedNode, Victim, Attacker, Bystander)
	if err = d.createWorkload(ctx); err != nil {
		return d, err
	}
	d.say("applying the example SideChannelPolicy (action: Migrate)")
	if err = d.applySample(ctx, filepath.Join(root, "config", "samples", "sidewatch_v1alpha1_sidechannelpolicy.yaml")); err != nil {
		return d, err
	}

	d.TracePath = filepath.Join(d.workDir, "attack-trace.csv")
	d.say("recording the attack: a cache covert channel between %s and %s on %s (%s)", Victim, Attacker, AttackedNode, d.TracePath)
	if err = WriteAttackTrace(d.TracePath); err != nil {
		return d, err
	}

	d.say("starting a stand-in for KubeVirt's virt-controller that carries out VirtualMachineInstanceMigrations (log: %s)", filepath.Join(d.workDir, "virt-controller.log"))
	if err = d.startVirtController(runCtx); err != nil {
		return d, err
	}

	opKubeconfig := filepath.Join(d.workDir, "operator.kubeconfig")
	if err = serviceAccountKubeconfig(ctx, d.env, Namespace, "sidewatch-operator", nil, opKubeconfig); err != nil {
		return d, err
	}
	agentKubeconfig := filepath.Join(d.workDir, "agent.kubeconfig")
	if err = serviceAccountKubeconfig(ctx, d.env, Namespace, "sidewatch-agent", agentPod(Namespace, AttackedNode), agentKubeconfig); err != nil {
		return d, err
	}

	if d.OperatorMetrics, err = freeAddr(); err != nil {
		return d, err
	}
	probes, err := freeAddr()
	if err != nil {
		return d, err
	}
	d.say("starting the operator as service account sidewatch-operator (log: %s)", filepath.Join(d.workDir, "operator.log"))
	op, err := startProcess("operator", filepath.Join(d.workDir, "operator.log"), bins["manager"],
		"--kubeconfig="+opKubeconfig,
		"--namespace="+Namespace,
		"--metrics-bind-address="+d.OperatorMetrics,
		"--health-probe-bind-address="+probes,
		"--leader-elect=true",
	)
	if err != nil {
		return d, err
	}
	d.procs = append(d.procs, op)

	if d.AgentMetrics, err = freeAddr(); err != nil {
		return d, err
	}
	d.say("starting the node agent of %s as service account sidewatch-agent, replaying the recorded attack (log: %s)", AttackedNode, filepath.Join(d.workDir, "agent.log"))
	agent, err := startProcess("agent", filepath.Join(d.workDir, "agent.log"), bins["sidewatch-agent"], "run",
		"--node-name="+AttackedNode,
		"--kubeconfig="+agentKubeconfig,
		"--namespace="+Namespace,
		"--metrics-bind-address="+d.AgentMetrics,
		"--proc-root=/proc",
		"--sys-root=/sys",
		"--replay="+d.TracePath,
		fmt.Sprintf("--replay-speed=%g", opts.ReplaySpeed),
	)
	if err != nil {
		return d, err
	}
	d.procs = append(d.procs, agent)
	return d, nil
}

// build compiles the three binaries into dir.
func build(ctx context.Context, root, dir string) (map[string]string, error) {
	out := map[string]string{}
	for name, pkg := range map[string]string{"manager": ".", "sidewatch-agent": "./daemonset", "sidewatch": "./cmd/sidewatch"} {
		bin := filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
		out[name] = bin
	}
	return out, nil
}

func (d *Demo) createWorkload(ctx context.Context) error {
	for _, n := range Nodes {
		node := fakevirt.NewNode(n, map[string]string{"kubevirt.io/schedulable": "true"})
		if err := fakevirt.CreateNode(ctx, d.client, node); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	for name, labels := range map[string]map[string]string{"payments": {"tenant": "payments"}, "batch": {"tenant": "batch"}} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if err := d.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	for _, v := range []struct {
		key    types.NamespacedName
		node   string
		labels map[string]string
	}{
		{Victim, AttackedNode, map[string]string{"sidewatch.io/protect": "true", "app": "postgres"}},
		{Attacker, AttackedNode, map[string]string{"app": "renderer"}},
		{Bystander, AttackedNode, map[string]string{"app": "etl"}},
	} {
		if err := fakevirt.CreateVMI(ctx, d.client, fakevirt.NewVMI(v.key.Namespace, v.key.Name, v.node, v.labels)); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

func (d *Demo) applySample(ctx context.Context, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(raw, &u.Object); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return manifests.Apply(ctx, d.client, []*unstructured.Unstructured{u}, manifests.Options{FieldOwner: "sidewatch-demo"})
}

func (d *Demo) startVirtController(ctx context.Context) error {
	var err error
	if d.virtLog, err = os.Create(filepath.Join(d.workDir, "virt-controller.log")); err != nil {
		return err
	}
	// controller-runtime's logger is process-wide; the stand-in is the
	// only controller-runtime user in the demo's own process.
	ctrl.SetLogger(zap.New(zap.WriteTo(d.virtLog)))
	mgr, err := ctrl.NewManager(d.env.Config, ctrl.Options{
		Scheme:  Scheme(),
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		return err
	}
	// A step a second, so that one can watch the migration progress.
	if err := fakevirt.New(mgr.GetClient(), fakevirt.Options{StepDelay: time.Second}).SetupWithManager(mgr); err != nil {
		return err
	}
	d.mgrDone = make(chan error, 1)
	go func() { d.mgrDone <- mgr.Start(ctx) }()
	return nil
}

// Result is what the demo ended with.
type Result struct {
	Finding      *v1alpha1.ThreatFinding
	VictimBefore string
	VictimAfter  string
	Elapsed      time.Duration
}

// WaitMitigated narrates `kubectl get threatfindings` every time a finding
// or the victim's node changes, until the finding about the victim is
// Mitigated (or ends otherwise), and returns it with the victim's node.
func (d *Demo) WaitMitigated(ctx context.Context, timeout time.Duration) (Result, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	res := Result{VictimBefore: AttackedNode}
	var lastState string
	policyShown := false
	for {
		for _, p := range d.procs {
			if done, err := p.exited(); done {
				return res, fmt.Errorf("the %s exited (%v); see %s", p.name, err, p.log.Name())
			}
		}
		if !policyShown && d.policyObserved(ctx) {
			policyShown = true
			out, _ := d.KubectlOutput(ctx, "get", "scp")
			fmt.Fprintf(d.opts.Out, "\n[%5.1fs] $ kubectl get scp\n%s", time.Since(start).Seconds(), out)
			msg, _ := d.KubectlOutput(ctx, "get", "scp", "protect-payments", "-o", "jsonpath={range .status.unmonitoredNodes[*]}  {.node}: {.reason}: {.message}{\"\\n\"}{end}")
			if strings.TrimSpace(msg) != "" {
				fmt.Fprintf(d.opts.Out, "unmonitored nodes (from the agents' heartbeats):\n%s", msg)
			}
		}
		var list v1alpha1.ThreatFindingList
		if err := d.client.List(ctx, &list); err != nil {
			return res, err
		}
		var vmi virtv1.VirtualMachineInstance
		if err := d.client.Get(ctx, Victim, &vmi); err != nil {
			return res, err
		}
		state := "vmi=" + vmi.Status.NodeName
		for _, f := range list.Items {
			state += fmt.Sprintf(";%s/%s=%s", f.Namespace, f.Name, f.Status.Phase)
		}
		if state != lastState {
			lastState = state
			tf, _ := d.KubectlOutput(ctx, "get", "threatfindings", "-A", "-o", "wide")
			vm, _ := d.KubectlOutput(ctx, "get", "vmi", "-n", Victim.Namespace, Victim.Name)
			fmt.Fprintf(d.opts.Out, "\n[%5.1fs] $ kubectl get threatfindings -A -o wide\n%s[%5.1fs] $ kubectl get vmi -n %s %s\n%s",
				time.Since(start).Seconds(), tf, time.Since(start).Seconds(), Victim.Namespace, Victim.Name, vm)
		}
		for i := range list.Items {
			f := &list.Items[i]
			if f.Namespace != Victim.Namespace || f.Spec.Victim.Name != Victim.Name || !f.Status.Phase.Final() {
				continue
			}
			res.Finding = f
			res.Elapsed = time.Since(start)
			res.VictimAfter = vmi.Status.NodeName
			if f.Status.Phase != v1alpha1.PhaseMitigated {
				return res, fmt.Errorf("finding %s ended %s: %s", f.Name, f.Status.Phase, f.Status.Message)
			}
			return res, nil
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("no mitigated finding about %s after %s; see %s and %s", Victim, timeout,
				filepath.Join(d.workDir, "agent.log"), filepath.Join(d.workDir, "operator.log"))
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// policyObserved reports whether the operator has written the example
// policy's status.
func (d *Demo) policyObserved(ctx context.Context) bool {
	var p v1alpha1.SideChannelPolicy
	if err := d.client.Get(ctx, types.NamespacedName{Name: "protect-payments"}, &p); err != nil {
		return false
	}
	return p.Status.ObservedGeneration == p.Generation && len(p.Status.Conditions) > 0
}

// KubectlOutput runs kubectl against the demo cluster.
func (d *Demo) KubectlOutput(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.Kubectl, append([]string{"--kubeconfig", d.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Stop stops the agent, the operator, the stand-in and the control plane,
// and removes the work directory if the demo made it.
func (d *Demo) Stop() {
	if d == nil {
		return
	}
	for i := len(d.procs) - 1; i >= 0; i-- {
		d.procs[i].stop(10 * time.Second)
	}
	d.procs = nil
	if d.cancel != nil {
		d.cancel()
	}
	if d.mgrDone != nil {
		select {
		case <-d.mgrDone:
		case <-time.After(10 * time.Second):
		}
	}
	if d.virtLog != nil {
		d.virtLog.Close()
	}
	if d.env != nil {
		if err := d.env.Stop(); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintln(d.opts.Out, "demo: stop control plane:", err)
		}
		d.env = nil
	}
	if d.ownWorkDir {
		os.RemoveAll(d.workDir)
	}
}
