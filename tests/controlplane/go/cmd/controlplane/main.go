// Command controlplane is a multi-call binary holding kube-apiserver,
// kube-controller-manager and etcd, built from their published modules so
// the tests run against the real thing. One binary instead of three: the
// three share most of their dependencies, so this saves build time (one link
// instead of three) and disk.
//
// Usage: controlplane kube-apiserver|kube-controller-manager|etcd [flags...]
// (or through a symlink named after the command).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if !known(name) {
		if len(args) == 0 {
			usage()
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "kube-apiserver":
		os.Exit(runCobra(apiserver.NewAPIServerCommand(), args))
	case "kube-controller-manager":
		os.Exit(runCobra(controllermanager.NewControllerManagerCommand(), args))
	case "etcd":
		// etcdmain parses args[1:] itself and exits on its own.
		etcdmain.Main(append([]string{"etcd"}, args...))
	default:
		usage()
	}
}

func known(name string) bool {
	return name == "kube-apiserver" || name == "kube-controller-manager" || name == "etcd"
}

func runCobra(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane kube-apiserver|kube-controller-manager|etcd [flags...]")
	os.Exit(2)
}
