namespace Microsoft.ML.RepAdapter.Tests;
[TestClass]
public class ProbeTests
{
    [TestMethod]
    public void Probe() => Assert.AreEqual("Microsoft.ML.ModelSaveContext 2", Microsoft.ML.RepAdapter.Probe.Check());
}
