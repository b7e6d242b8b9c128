package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/version"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
	"github.com/sidewatch/sidewatch/node-agent/collect/replay"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

type runFlags struct {
	commonFlags
	namespace     string
	kubeconfig    string
	metricsAddr   string
	heartbeat     time.Duration
	rescan        time.Duration
	replayPath    string
	replaySpeed   float64
	replayLoop    bool
	qps           float64
	burst         int
	findingRate   float64
	findingBurst  int
	findingUpdate time.Duration
	maxFindings   int
}

func newRunCommand(logger func() logr.Logger) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Watch the VMIs on this node, count and sample their vCPU threads, detect attacks, write ThreatFindings and the node heartbeat",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), logger(), f)
		},
	}
	f.bind(cmd)
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "sidewatch-system"
	}
	fl := cmd.Flags()
	fl.StringVar(&f.namespace, "namespace", ns, "the agent's namespace: heartbeat Leases and signature profile ConfigMaps live here (default: $POD_NAMESPACE, else sidewatch-system)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
	fl.StringVar(&f.metricsAddr, "metrics-bind-address", ":8090", "address of /metrics, /healthz and /readyz; 0 disables them")
	fl.DurationVar(&f.heartbeat, "heartbeat-duration", v1alpha1.DefaultHeartbeatSeconds*time.Second, "the heartbeat Lease's duration; it is renewed every third of it")
	fl.DurationVar(&f.rescan, "rescan-interval", time.Second, "how often the proc tree is checked for QEMU processes and vCPU threads")
	fl.StringVar(&f.replayPath, "replay", "", "feed the pipeline from this recorded trace (format v1) at real-time pace instead of perf, matching its VMIs to the watched ones by namespace/name")
	fl.Float64Var(&f.replaySpeed, "replay-speed", 1, "with --replay: delivery pace relative to real time (rows keep the trace's spacing)")
	fl.BoolVar(&f.replayLoop, "replay-loop", false, "with --replay: start over at the end of the trace")
	fl.Float64Var(&f.qps, "kube-api-qps", 20, "queries per second to the API server")
	fl.IntVar(&f.burst, "kube-api-burst", 40, "burst above --kube-api-qps")
	fl.Float64Var(&f.findingRate, "finding-writes-per-second", 2, "the most ThreatFinding writes per second this agent makes")
	fl.IntVar(&f.findingBurst, "finding-writes-burst", 10, "burst above --finding-writes-per-second")
	fl.DurationVar(&f.findingUpdate, "finding-update-interval", 10*time.Second, "the least time between two updates of one ThreatFinding; detections in between are merged")
	fl.IntVar(&f.maxFindings, "max-active-findings", 64, "the most ThreatFindings this agent keeps open; further victim+type pairs are dropped and counted")
	return cmd
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if cfg, err := rest.InClusterConfig(); err == nil {
			return cfg, nil
		}
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" {
		return nil, errors.New("not in a cluster and no kubeconfig: pass --kubeconfig or set KUBECONFIG")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

func run(ctx context.Context, log logr.Logger, f *runFlags) error {
	if err := f.check(); err != nil {
		return err
	}
	if f.replayPath != "" && f.replaySpeed <= 0 {
		return fmt.Errorf("--replay-speed %v must be positive", f.replaySpeed)
	}
	log = log.WithValues("node", f.node)
	raiseLimits(log)

	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = float32(f.qps), f.burst
	cfg.UserAgent = "sidewatch-agent/" + version.Version
	scheme, err := discovery.Scheme()
	if err != nil {
		return err
	}
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}

	caps, err := capabilities.Probe(capabilities.Options{Node: f.node, AgentVersion: version.Version, ProcRoot: f.procRoot, SysRoot: f.sysRoot})
	if err != nil {
		log.Error(err, "probing the node's capabilities")
		caps.Monitorable, caps.Reason = false, v1alpha1.ReasonNoHardwareCounters
		caps.Message = fmt.Sprintf("node %s: the agent could not probe the CPU: %v", f.node, err)
	}
	caps, kl, kernelBus, kernelSplit := withKernel(ctx, caps, f.sysRoot, log.WithName("kernel"))
	if kl != nil {
		defer func() {
			if err := kl.Close(); err != nil {
				log.Error(err, "unloading the eBPF programs")
			}
		}()
	}
	var col collect.Collector
	if f.replayPath != "" {
		rc := replay.New(log.WithName("replay"), replay.Options{Path: f.replayPath, Speed: f.replaySpeed, Loop: f.replayLoop})
		if err := rc.Probe(ctx); err != nil {
			return err
		}
		col = rc
		caps = replayCapabilities(caps, f.replayPath)
	} else {
		pc := perf.New(log.WithName("perf"))
		pc.UseKernelSampler(samplerFor(kl))
		col = pc
	}
	log.Info("starting", "version", version.Version, "monitorable", caps.Monitorable, "reason", caps.Reason, "message", caps.Message,
		"cpu", fmt.Sprintf("%s family %d model %d", caps.PMU.Vendor, caps.PMU.Family, caps.PMU.Model),
		"pmu", caps.PMU.Present, "guestOnly", caps.PMU.GuestOnlyCounting, "branchStack", caps.PMU.BranchStack,
		"perfEventParanoid", caps.PerfEventParanoid, "capabilities", caps.Capabilities, "fdLimit", caps.FileDescriptors.Limit,
		"source", col.Name(), "ebpf", len(caps.EBPF), "ebpfBusLocks", kernelBus, "ebpfSplitLocks", kernelSplit)

	watcher, err := discovery.NewWatcher(cfg, scheme, f.node)
	if err != nil {
		return err
	}
	var ready atomic.Bool
	hb, err := report.NewHeartbeat(k8s, log.WithName("heartbeat"), nil, f.namespace, f.node, f.heartbeat)
	if err != nil {
		return err
	}
	findings := report.NewFindingWriter(k8s, log.WithName("findings"), nil, report.FindingOptions{
		Node: f.node, MinUpdateInterval: f.findingUpdate, WritesPerSecond: f.findingRate, Burst: f.findingBurst, MaxActive: f.maxFindings,
	})
	// Guest introspection attributes sampled guest addresses (findings'
	// guest programs, the side-channel signatures); a replay has no guests.
	var resolver detect.Resolver
	var in *agent.Introspector
	if f.replayPath == "" {
		in = agent.NewIntrospector(log.WithName("introspect"), f.procRoot)
		defer in.Close()
		resolver = in
	}
	opts := agent.Options{
		Node: f.node, AgentVersion: version.Version, Log: log.WithName("agent"),
		World: watcher, ProcRoot: f.procRoot, Collector: col, Capabilities: caps,
		Detectors:      agent.DetectFactory(log.WithName("detect"), profileLoader(ctx, k8s, f.namespace), resolver),
		Findings:       findings,
		Evidence:       true,
		Host:           hostInfo(caps, f.sysRoot),
		RescanInterval: f.rescan,
	}
	if kl != nil && f.replayPath == "" {
		opts.Kernel, opts.KernelBusLocks, opts.KernelSplitLocks = kl, kernelBus, kernelSplit
	}
	if in != nil {
		opts.Attributor = in
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}

	var hbFailures atomic.Uint64
	var hbLast atomic.Int64
	metrics, err := report.NewMetrics(func() report.AgentStats {
		s := a.Stats()
		s.HeartbeatFailures = hbFailures.Load()
		if t := hbLast.Load(); t > 0 {
			s.LastHeartbeat = float64(t) / 1e9
		}
		return s
	})
	if err != nil {
		return err
	}
	srv, err := serve(f.metricsAddr, metrics, a, &ready, log)
	if err != nil {
		return err
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The heartbeat starts before the informers sync: the operator learns
	// about the node (and why it cannot be monitored) without waiting.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		hb.Run(runCtx, a.Capabilities, func(err error) {
			if err != nil {
				hbFailures.Add(1)
			} else {
				hbLast.Store(time.Now().UnixNano())
			}
		})
	}()
	if err := watcher.Start(runCtx); err != nil {
		cancel()
		wg.Wait()
		shutdownServer(srv, log)
		return err
	}
	ready.Store(true)
	log.Info("watching", "namespace", f.namespace)
	runErr := a.Run(runCtx) // returns after closing the collector and writing due findings
	cancel()
	wg.Wait()
	shutdownServer(srv, log)
	if runErr != nil {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// replayCapabilities describes a replaying agent honestly: it monitors,
// but from a recording, which the message says.
func replayCapabilities(c v1alpha1.NodeCapabilities, path string) v1alpha1.NodeCapabilities {
	c.Monitorable, c.Reason = true, ""
	c.Message = fmt.Sprintf("node %s: replaying the recorded trace %s instead of live counters", c.Node, path)
	c.Signals = nil
	for _, e := range v1alpha1.AllCounterEvents {
		c.Signals = append(c.Signals, v1alpha1.SignalStatus{Name: string(e), Available: true, Source: "replay"})
	}
	c.Signals = append(c.Signals, v1alpha1.SignalStatus{Name: "guest_ip_samples", Available: true, Source: "replay"})
	return c
}

// profileLoader reads a signature's counter profile from the ConfigMap
// the policy names, in the agent's namespace.
func profileLoader(ctx context.Context, k8s client.Client, namespace string) detect.ProfileLoader {
	return func(name string) (*detect.Profile, error) {
		var cm corev1.ConfigMap
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := k8s.Get(cctx, client.ObjectKey{Namespace: namespace, Name: name}, &cm); err != nil {
			return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, name, err)
		}
		data, ok := cm.Data["profile.json"]
		if !ok {
			return nil, fmt.Errorf("ConfigMap %s/%s has no key profile.json (write it with sidewatch profile)", namespace, name)
		}
		return detect.ParseProfile([]byte(data))
	}
}

// serve starts /metrics, /healthz and /readyz.
func serve(addr string, m *report.Metrics, a *agent.Agent, ready *atomic.Bool, log logr.Logger) (*http.Server, error) {
	if addr == "0" || addr == "" {
		return nil, nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "informers not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-bind-address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "metrics server")
		}
	}()
	log.Info("serving metrics", "address", ln.Addr().String())
	return srv, nil
}

func shutdownServer(srv *http.Server, log logr.Logger) {
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Error(err, "stopping the metrics server")
	}
}
