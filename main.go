// Command manager is the sidewatch operator: it reconciles ThreatFindings
// written by the node agents into status, Events, metrics and live
// migrations of victim VMIs, and keeps SideChannelPolicy status current.
package main

import (
	"flag"
	"os"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	sidewatchv1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/controllers"
	"github.com/sidewatch/sidewatch/internal/version"
)

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(sidewatchv1alpha1.AddToScheme(s))
	utilruntime.Must(virtv1.AddToScheme(s))
	return s
}

func main() {
	var (
		metricsAddr       string
		probeAddr         string
		leaderElect       bool
		leaderElectNS     string
		namespace         string
		findingTTL        time.Duration
		suspectQuarantine time.Duration
		findingWorkers    int
		qps               float64
		burst             int
		pprofAddr         string
		eventQPS          float64
		eventBurst        int
	)
	defaultNS := os.Getenv("POD_NAMESPACE")
	if defaultNS == "" {
		defaultNS = controllers.DefaultNamespace
	}
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address the Prometheus metrics endpoint binds to; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz probes bind to")
	flag.BoolVar(&leaderElect, "leader-elect", true, "elect a leader so that only one manager replica acts at a time")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", "", "namespace of the leader-election Lease (default: --namespace)")
	flag.StringVar(&namespace, "namespace", defaultNS, "the operator's namespace, where the node agents keep their heartbeat Leases (default: $POD_NAMESPACE, else sidewatch-system)")
	flag.DurationVar(&findingTTL, "finding-ttl", controllers.DefaultFindingTTL, "how long a resolved ThreatFinding is kept before it is deleted; unresolved findings are never deleted")
	flag.DurationVar(&suspectQuarantine, "suspect-quarantine", controllers.DefaultSuspectQuarantine, "how long after a finding resolves the nodes its suspects run on stay excluded as migration targets; 0 turns this off")
	flag.IntVar(&findingWorkers, "finding-workers", controllers.DefaultFindingWorkers, "how many ThreatFindings are reconciled at once")
	flag.Float64Var(&qps, "kube-api-qps", 200, "queries per second the operator may send to the API server (KubeVirt's virt-controller uses the same)")
	flag.IntVar(&burst, "kube-api-burst", 400, "burst of queries above --kube-api-qps")
	flag.Float64Var(&eventQPS, "events-qps", controllers.DefaultEventQPS, "queries per second for writing Events, apart from --kube-api-qps so that a burst of Events never delays a migration")
	flag.IntVar(&eventBurst, "events-burst", controllers.DefaultEventBurst, "burst of Event writes above --events-qps")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "address a net/http/pprof endpoint binds to, for profiling; 0 (the default) disables it")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	if findingTTL <= 0 {
		log.Error(nil, "--finding-ttl must be positive", "value", findingTTL)
		os.Exit(2)
	}
	if suspectQuarantine == 0 {
		suspectQuarantine = -1 // Options: negative turns it off, zero means the default
	}
	if leaderElectNS == "" {
		leaderElectNS = namespace
	}

	cfg := ctrl.GetConfigOrDie()
	cfg.QPS, cfg.Burst = float32(qps), burst
	cfg.UserAgent = "sidewatch-operator/" + version.Version
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  newScheme(),
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		PprofBindAddress:        pprofAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "sidewatch-operator.sidewatch.io",
		LeaderElectionNamespace: leaderElectNS,
		// The manager exits at once when it loses the lease, so a new
		// leader never acts alongside an old one.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         cacheOptions(namespace),
	})
	if err != nil {
		log.Error(err, "unable to create manager")
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	if _, err := controllers.Setup(ctx, mgr, controllers.Options{
		Namespace:         namespace,
		FindingTTL:        findingTTL,
		SuspectQuarantine: suspectQuarantine,
		FindingWorkers:    findingWorkers,
		EventQPS:          float32(eventQPS),
		EventBurst:        eventBurst,
	}); err != nil {
		log.Error(err, "unable to set up controllers")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "unable to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "unable to set up ready check")
		os.Exit(1)
	}
	log.Info("starting manager", "version", version.Version, "namespace", namespace, "metrics", metricsAddr, "probes", probeAddr,
		"leaderElection", leaderElect, "findingTTL", findingTTL, "findingWorkers", findingWorkers)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "manager exited")
		os.Exit(1)
	}
}

// cacheOptions keeps the cache small: heartbeat Leases only from the
// operator's namespace, and no managedFields on anything.
func cacheOptions(namespace string) cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{namespace: {}}},
		},
	}
}
