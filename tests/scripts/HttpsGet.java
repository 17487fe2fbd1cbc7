// GET one HTTPS URL with the JRE's default truststore; prints the body.
// usage: java HttpsGet.java URL
import java.io.InputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;

public class HttpsGet {
    public static void main(String[] args) throws Exception {
        try (InputStream in = URI.create(args[0]).toURL().openStream()) {
            System.out.print(new String(in.readAllBytes(), StandardCharsets.UTF_8));
        }
    }
}
