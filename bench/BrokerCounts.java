// The broker's own request counters, read from its JVM for bench/bench_broker.py.
//
// Attaches to a local JVM by PID (the JDK's attach API: no JMX port to open on the
// broker, same user only), starts its local management agent and prints the
// "Count" attribute of every MBean matching each pattern, one "name<TAB>count" line
// per MBean. Run as a single-file source program (Java 11+, a JDK):
//
//   java bench/BrokerCounts.java <pid> 'kafka.network:type=RequestMetrics,name=RequestsPerSec,*'
import com.sun.tools.attach.VirtualMachine;
import java.util.TreeSet;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerCounts {
  public static void main(String[] args) throws Exception {
    VirtualMachine vm = VirtualMachine.attach(args[0]);
    try (JMXConnector connector =
        JMXConnectorFactory.connect(new JMXServiceURL(vm.startLocalManagementAgent()))) {
      MBeanServerConnection server = connector.getMBeanServerConnection();
      for (int i = 1; i < args.length; i++) {
        for (ObjectName name : new TreeSet<>(server.queryNames(new ObjectName(args[i]), null))) {
          System.out.println(name + "\t" + server.getAttribute(name, "Count"));
        }
      }
    } finally {
      vm.detach();
    }
  }
}
